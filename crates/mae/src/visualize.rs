//! The paper's reconstruction picture: for each image a row of
//! original | masked (visible patches only) | reconstruction | reconstruction with the visible
//! patches pasted back.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{Rgb, RgbImage};
use mae_patch::{patchify, unpatchify, MaskPlan};

use crate::error::{MaeError, Result};
use crate::model::MaskedAutoencoder;

/// How the pictures show the pixels: the per-channel normalisation that was applied, to undo
/// (one mean and std per channel; a single pair applies to every channel), and which channels
/// are shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Denormalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub bands: BandView,
}

impl Default for Denormalize {
    /// ImageNet statistics, the MAE transform's default.
    fn default() -> Self {
        Self { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225], bands: BandView::Auto }
    }
}

/// Which channels a picture shows (`--bands`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BandView {
    /// Three or more channels: the first three as RGB (RGBA without its alpha); one or two: the
    /// first in grey.
    #[default]
    Auto,
    /// These three channels (0-based) as red, green and blue: a false-colour composite.
    Rgb([usize; 3]),
    /// Every channel in grey, one row of panels per channel.
    EachGray,
}

impl BandView {
    /// Whether images of `channels` channels have the bands shown.
    pub fn check(self, channels: usize) -> Result<()> {
        self.rows(channels).map(|_| ())
    }

    /// The channel triples shown for an image of `channels` channels, one per row of panels.
    fn rows(self, channels: usize) -> Result<Vec<[usize; 3]>> {
        Ok(match self {
            BandView::Auto if channels >= 3 => vec![[0, 1, 2]],
            BandView::Auto => vec![[0; 3]],
            BandView::Rgb(t) => {
                if let Some(&b) = t.iter().find(|&&b| b >= channels) {
                    return Err(MaeError::Config(format!(
                        "band {} is shown, and the images have {channels} (bands count from 1)",
                        b + 1
                    )));
                }
                vec![t]
            }
            BandView::EachGray => (0..channels).map(|b| [b; 3]).collect(),
        })
    }
}

impl std::str::FromStr for BandView {
    type Err = String;

    /// `auto`, `gray` (each band in grey), or three band numbers counted from 1 as GDAL does,
    /// e.g. `4,3,2` (Sentinel-2's true colour from its bands 4, 3 and 2 in order).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => return Ok(BandView::Auto),
            "gray" | "grey" => return Ok(BandView::EachGray),
            _ => {}
        }
        let numbers: Vec<usize> = s
            .split(',')
            .map(|b| b.trim().parse::<usize>().ok().filter(|&b| b >= 1))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                format!("`{s}`: expected `auto`, `gray` or three band numbers from 1, e.g. 3,2,1")
            })?;
        match numbers[..] {
            [r, g, b] => Ok(BandView::Rgb([r - 1, g - 1, b - 1])),
            _ => Err(format!("`{s}`: three band numbers (red, green, blue), e.g. 3,2,1")),
        }
    }
}

impl std::fmt::Display for BandView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BandView::Auto => write!(f, "auto"),
            BandView::EachGray => write!(f, "gray"),
            BandView::Rgb([r, g, b]) => write!(f, "{},{},{}", r + 1, g + 1, b + 1),
        }
    }
}

/// The four panels of each image, `[B, C, H, W]` in normalised pixel space.
pub struct Reconstruction {
    pub original: Tensor,
    pub masked: Tensor,
    pub reconstruction: Tensor,
    pub pasted: Tensor,
}

/// Runs the model on `pixels` with `plan` and assembles the four panels. With `norm_pix_loss` the
/// model predicts per-patch normalised pixels; they are mapped back with each true patch's mean
/// and standard deviation (as the paper's visualisations of such models do).
pub fn reconstruct(model: &MaskedAutoencoder, pixels: &Tensor, plan: &MaskPlan) -> Result<Reconstruction> {
    let config = model.config();
    let p = config.patch_size;
    let grid = mae_patch::PatchGrid::new(config.image_size[0], config.image_size[1], p)?;
    let out = model.forward_with_plan(pixels, plan)?;
    let target = patchify(pixels, p)?; // [B, L, p*p*C]
    let mut pred = out.pred.detach();
    if config.norm_pix_loss {
        let mean = target.mean_keepdim(candle_core::D::Minus1)?;
        let var = target.broadcast_sub(&mean)?.sqr()?.sum_keepdim(candle_core::D::Minus1)?;
        let n = target.dim(candle_core::D::Minus1)?.saturating_sub(1).max(1);
        let std = ((var / n as f64)? + mae_loss::NORM_PIX_EPS)?.sqrt()?;
        pred = pred.broadcast_mul(&std)?.broadcast_add(&mean)?;
    }
    let mask = out.mask.unsqueeze(2)?; // [B, L, 1], 1 = removed
    let keep = (1.0 - &mask)?;
    let c = config.in_channels;
    // Removed patches shown as mid-grey (0 in normalised space is the dataset mean).
    let masked = target.broadcast_mul(&keep)?;
    let pasted = (target.broadcast_mul(&keep)? + pred.broadcast_mul(&mask)?)?;
    Ok(Reconstruction {
        original: pixels.clone(),
        masked: unpatchify(&masked, grid, c)?,
        reconstruction: unpatchify(&pred, grid, c)?,
        pasted: unpatchify(&pasted, grid, c)?,
    })
}

/// Channel `c`'s entry of a per-channel statistic (its only one when it has one; `missing` when
/// it has none).
fn stat(values: &[f32], c: usize, missing: f32) -> f32 {
    values.get(c).or(values.last()).copied().unwrap_or(missing)
}

/// `[C, H, W]` normalised pixels -> an RGB picture of channels `sources` (the same channel thrice
/// for grey).
fn to_rgb(img: &Tensor, denorm: &Denormalize, sources: [usize; 3]) -> Result<RgbImage> {
    let (_, h, w) = img.dims3()?;
    let data = img.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let mut px = [0u8; 3];
            for (ch, v) in px.iter_mut().enumerate() {
                let src = sources[ch];
                let (std, mean) = (stat(&denorm.std, src, 1.0), stat(&denorm.mean, src, 0.0));
                let value = data[src * h * w + y * w + x] * std + mean;
                *v = (value.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
            out.put_pixel(x as u32, y as u32, Rgb(px));
        }
    }
    Ok(out)
}

/// Lays the panels out as a grid (one row per image, or per image and band with
/// [`BandView::EachGray`]; four columns), each panel scaled up by an integer factor so small
/// images stay visible, and writes it as PNG.
pub fn save_grid(rec: &Reconstruction, denorm: &Denormalize, path: &Path) -> Result<()> {
    let (b, c, h, w) = rec.original.dims4()?;
    let views = denorm.bands.rows(c)?;
    let rows = (b * views.len()) as u32;
    let scale = (128 / h.max(w)).max(1) as u32;
    let (cell_w, cell_h, gap) = (w as u32 * scale, h as u32 * scale, 4u32);
    let mut canvas =
        RgbImage::from_pixel(4 * cell_w + 5 * gap, rows * cell_h + (rows + 1) * gap, Rgb([255; 3]));
    for (col, panel) in [&rec.original, &rec.masked, &rec.reconstruction, &rec.pasted].into_iter().enumerate()
    {
        for row in 0..b * views.len() {
            let small = to_rgb(&panel.get(row / views.len())?, denorm, views[row % views.len()])?;
            let big = image::imageops::resize(&small, cell_w, cell_h, image::imageops::FilterType::Nearest);
            let (x0, y0) = (gap + col as u32 * (cell_w + gap), gap + row as u32 * (cell_h + gap));
            image::imageops::replace(&mut canvas, &big, x0 as i64, y0 as i64);
        }
    }
    let mut bytes = Vec::new();
    canvas
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| MaeError::Config(format!("cannot encode {}: {e}", path.display())))?;
    crate::io::write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MaeConfig;
    use rand::SeedableRng;

    #[test]
    fn panels_have_the_image_shape_and_pasting_keeps_visible_pixels() -> Result<()> {
        let mut config = MaeConfig::mae_vit_tiny_patch4_32();
        config.encoder.depth = 1;
        config.decoder.depth = 1;
        config.norm_pix_loss = true;
        let model = MaskedAutoencoder::new(&config, 0, &Device::Cpu)?;
        let pixels = Tensor::arange(0f32, 2. * 3. * 32. * 32., &Device::Cpu)?.reshape((2, 3, 32, 32))?;
        let pixels = ((pixels / 3000.0)? - 1.0)?;
        let plan = mae_patch::random_masking(2, 64, 0.75, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1))?;
        let rec = reconstruct(&model, &pixels, &plan)?;
        for t in [&rec.masked, &rec.reconstruction, &rec.pasted] {
            assert_eq!(t.dims(), &[2, 3, 32, 32]);
        }
        // Where a patch is visible, the pasted panel is the original.
        let keep = (1.0 - plan.mask(DType::F32, &Device::Cpu)?)?.unsqueeze(2)?;
        let diff = (patchify(&rec.pasted, 4)? - patchify(&pixels, 4)?)?.broadcast_mul(&keep)?;
        assert!(diff.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        let dir = tempfile::tempdir().map_err(|e| MaeError::io("tempdir", e))?;
        let path = dir.path().join("grid.png");
        save_grid(&rec, &Denormalize::default(), &path)?;
        let img = image::open(&path).map_err(|e| MaeError::Config(e.to_string()))?;
        assert_eq!((img.width(), img.height()), (4 * 128 + 20, 2 * 128 + 12));
        Ok(())
    }

    #[test]
    fn band_views_parse_from_one_and_round_trip() {
        assert_eq!("3,2,1".parse(), Ok(BandView::Rgb([2, 1, 0])));
        assert_eq!(" gray ".parse(), Ok(BandView::EachGray));
        for view in [BandView::Auto, BandView::EachGray, BandView::Rgb([3, 0, 12])] {
            assert_eq!(view.to_string().parse(), Ok(view));
        }
        for bad in ["0,1,2", "1,2", "1,2,3,4", "red", "1,,2", ""] {
            assert!(bad.parse::<BandView>().is_err(), "{bad}");
        }
    }

    /// Five flat bands (band b at value b / 10): a composite shows the chosen ones in its colour
    /// channels, `gray` gives a row per band, and a band past the last is an error naming it.
    #[test]
    fn band_views_pick_the_shown_channels() -> Result<()> {
        let levels: Vec<f32> = (0..5).flat_map(|b| vec![b as f32 / 10.0; 16]).collect();
        let image = Tensor::from_vec(levels, (1, 5, 4, 4), &Device::Cpu)?;
        let rec = Reconstruction {
            original: image.clone(),
            masked: image.clone(),
            reconstruction: image.clone(),
            pasted: image,
        };
        let dir = tempfile::tempdir().map_err(|e| MaeError::io("tempdir", e))?;
        let path = dir.path().join("grid.png");
        let identity = |bands| Denormalize { mean: vec![0.0], std: vec![1.0], bands };
        save_grid(&rec, &identity(BandView::Rgb([4, 0, 2])), &path)?;
        let img = image::open(&path).map_err(|e| MaeError::Config(e.to_string()))?.to_rgb8();
        assert_eq!(img.get_pixel(10, 10).0, [102, 0, 51]);
        save_grid(&rec, &identity(BandView::EachGray), &path)?;
        let img = image::open(&path).map_err(|e| MaeError::Config(e.to_string()))?.to_rgb8();
        assert_eq!(img.height(), 5 * 128 + 6 * 4);
        assert_eq!(img.get_pixel(10, 4 + 3 * 132 + 10).0, [77; 3]);
        let err = save_grid(&rec, &identity(BandView::Rgb([5, 0, 1])), &path).unwrap_err();
        assert!(err.to_string().contains("band 6"), "{err}");
        Ok(())
    }
}
