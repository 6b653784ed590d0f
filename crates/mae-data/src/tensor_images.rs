//! Images already in candle tensors, as a [`Dataset`] our loader reads like any other: what
//! `candle-datasets` loads MNIST and CIFAR-10 into (`candle_datasets::vision::Dataset`: pixels in
//! [0, 1] as f32, `[N, 784]` for MNIST and `[N, 3, 32, 32]` for CIFAR-10, u8 labels), or any
//! tensor of images a program holds. With the `candle-datasets` feature,
//! [`TensorImages::train`] and [`TensorImages::test`] take candle's struct directly.
//!
//! The pixels are stored as the integers the transforms decode from files: 8-bit when every
//! value is a multiple of 1/255 (candle-datasets' are: its loaders divide bytes by 255, so a
//! sample here is the same image as from our own MNIST or CIFAR-10 reader), 16-bit otherwise.

use candle_core::{DType, Tensor};
use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};

use crate::dataset::{out_of_range, Dataset, Sample};
use crate::error::{DataError, Result};

pub struct TensorImages {
    name: String,
    pixels: Pixels,
    /// Channels, height, width of every image.
    chw: (usize, usize, usize),
    labels: Option<Vec<u32>>,
    classes: Vec<String>,
}

/// Channel-first pixels of all images, one after the other.
enum Pixels {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

impl TensorImages {
    /// `images`: `[N, C, H, W]` (C of 1 to 4), `[N, H, W]`, or `[N, D]` with D a square (one
    /// channel, as candle-datasets' MNIST); u8, or floats in [0, 1]. `labels`: `[N]` integers
    /// below `num_classes` (class names are then "0", "1", ...). `name` is for messages.
    pub fn new(name: &str, images: &Tensor, labels: Option<&Tensor>, num_classes: usize) -> Result<Self> {
        // Not a `Spec` error: that one lists the `--data` forms, which a tensor never was.
        let bad = |reason: String| DataError::Config(format!("images `{name}`: {reason}"));
        let dims = images.dims();
        let (n, chw) = match *dims {
            [n, c, h, w] if (1..=4).contains(&c) => (n, (c, h, w)),
            [n, h, w] => (n, (1, h, w)),
            [n, d] => {
                let side = (d as f64).sqrt().round() as usize;
                if side * side != d {
                    return Err(bad(format!("images of {d} values each are not square: pass [N, C, H, W]")));
                }
                (n, (1, side, side))
            }
            _ => {
                return Err(bad(format!(
                "images of shape {dims:?}: expected [N, C, H, W] with C from 1 to 4, [N, H, W] or [N, H*W]"
            )))
            }
        };
        if n == 0 || chw.1 == 0 || chw.2 == 0 {
            return Err(bad(format!("no images (shape {dims:?})")));
        }
        let pixels = to_pixels(images).map_err(bad)?;
        let labels = match labels {
            None => None,
            Some(t) => Some(to_labels(t, n, num_classes).map_err(bad)?),
        };
        let classes = match labels {
            Some(_) => (0..num_classes).map(|c| c.to_string()).collect(),
            None => Vec::new(),
        };
        Ok(Self { name: name.to_string(), pixels, chw, labels, classes })
    }

    /// The training split of a `candle-datasets` vision dataset.
    #[cfg(feature = "candle-datasets")]
    pub fn train(dataset: &candle_datasets::vision::Dataset) -> Result<Self> {
        Self::new("candle-datasets train", &dataset.train_images, Some(&dataset.train_labels), dataset.labels)
    }

    /// The test split of a `candle-datasets` vision dataset.
    #[cfg(feature = "candle-datasets")]
    pub fn test(dataset: &candle_datasets::vision::Dataset) -> Result<Self> {
        Self::new("candle-datasets test", &dataset.test_images, Some(&dataset.test_labels), dataset.labels)
    }
}

/// All values as u8 when the tensor is u8 or every float is a multiple of 1/255, else as u16.
fn to_pixels(images: &Tensor) -> std::result::Result<Pixels, String> {
    let flat = images.flatten_all().map_err(|e| e.to_string())?;
    if flat.dtype() == DType::U8 {
        return flat.to_vec1::<u8>().map(Pixels::U8).map_err(|e| e.to_string());
    }
    let values = flat.to_dtype(DType::F32).and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())?;
    if let Some(i) = values.iter().position(|v| !(0.0..=1.0).contains(v)) {
        return Err(format!("value {} at flat index {i} is outside [0, 1] (or not a number)", values[i]));
    }
    let whole_255ths = values.iter().all(|&v| ((v * 255.0).round() - v * 255.0).abs() < 1e-3);
    Ok(if whole_255ths {
        Pixels::U8(values.iter().map(|&v| (v * 255.0).round() as u8).collect())
    } else {
        Pixels::U16(values.iter().map(|&v| (v * 65535.0).round() as u16).collect())
    })
}

fn to_labels(labels: &Tensor, n: usize, num_classes: usize) -> std::result::Result<Vec<u32>, String> {
    if labels.dims() != [n] {
        return Err(format!("labels of shape {:?} for {n} images", labels.dims()));
    }
    let values = labels.to_dtype(DType::U32).and_then(|t| t.to_vec1::<u32>()).map_err(|e| e.to_string())?;
    if let Some(i) = values.iter().position(|&l| l as usize >= num_classes) {
        return Err(format!("label {} of image {i} is not below the {num_classes} classes", values[i]));
    }
    Ok(values)
}

/// Channel-first planes to an interleaved image of `c` channels.
fn interleave<T: image::Primitive>(planes: &[T], (c, h, w): (usize, usize, usize)) -> Vec<T> {
    let mut out = Vec::with_capacity(planes.len());
    for p in 0..h * w {
        out.extend((0..c).map(|ch| planes[ch * h * w + p]));
    }
    out
}

/// An image of `c` channels from interleaved values (u8 or u16: one macro, two pixel types).
macro_rules! image_of {
    ($raw:expr, $c:expr, $w:expr, $h:expr) => {
        match $c {
            1 => ImageBuffer::<Luma<_>, _>::from_raw($w, $h, $raw).map(DynamicImage::from),
            2 => ImageBuffer::<LumaA<_>, _>::from_raw($w, $h, $raw).map(DynamicImage::from),
            3 => ImageBuffer::<Rgb<_>, _>::from_raw($w, $h, $raw).map(DynamicImage::from),
            _ => ImageBuffer::<Rgba<_>, _>::from_raw($w, $h, $raw).map(DynamicImage::from),
        }
    };
}

impl Dataset for TensorImages {
    fn len(&self) -> usize {
        let (c, h, w) = self.chw;
        let total = match &self.pixels {
            Pixels::U8(p) => p.len(),
            Pixels::U16(p) => p.len(),
        };
        total / (c * h * w)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len() {
            return Err(out_of_range(index, self));
        }
        let (c, h, w) = self.chw;
        let range = index * c * h * w..(index + 1) * c * h * w;
        let image = match &self.pixels {
            Pixels::U8(p) => image_of!(interleave(&p[range], self.chw), c, w as u32, h as u32),
            Pixels::U16(p) => image_of!(interleave(&p[range], self.chw), c, w as u32, h as u32),
        };
        // The buffer holds c*h*w values by construction; map the impossible anyway.
        let image = image.ok_or_else(|| DataError::decode(self.origin(index), "bad buffer size"))?;
        Ok(Sample { image: image.into(), label: self.labels.as_ref().map(|l| l[index]) })
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn describe(&self) -> String {
        let (c, h, w) = self.chw;
        let classes =
            if self.classes.is_empty() { String::new() } else { format!(", {} classes", self.classes.len()) };
        format!("{} ({} images of {c}x{h}x{w}{classes})", self.name, self.len())
    }
}
