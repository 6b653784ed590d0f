//! The decoded image of a sample: what the image crate holds (1 to 4 channels, 8 or 16-bit or
//! float), or a stack of bands read by our own TIFF (and DICOM) readers: any number of bands,
//! of any integer or float sample type, which `DynamicImage` cannot represent.

use image::DynamicImage;

/// A decoded sample image.
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    /// An image the image crate decoded: gray, gray + alpha, RGB or RGBA; 8, 16-bit or float.
    Standard(DynamicImage),
    /// Any number of bands as f32 (see [`BandImage`] for how sample values are scaled).
    Bands(BandImage),
}

/// Bands of equal size as f32, pixel-interleaved (`data[(y * width + x) * bands + b]`).
///
/// Unsigned integer samples are scaled to [0, 1] by their type's maximum (as 8 and 16-bit
/// images are everywhere else); signed integers and floats keep their values, since they are
/// measurements (elevation, reflectance, Hounsfield units) with no fixed range: normalise them
/// with the data's own `--mean`/`--std` (`mae stats`). Every value is finite (readers refuse
/// files with NaN or infinite samples, which would make the loss NaN).
#[derive(Debug, Clone, PartialEq)]
pub struct BandImage {
    pub width: u32,
    pub height: u32,
    pub bands: usize,
    pub data: Vec<f32>,
}

impl BandImage {
    /// A band image from interleaved samples; `None` when the length is not
    /// `width * height * bands` or a dimension is zero.
    pub fn new(width: u32, height: u32, bands: usize, data: Vec<f32>) -> Option<Self> {
        let ok =
            width > 0 && height > 0 && bands > 0 && data.len() == width as usize * height as usize * bands;
        ok.then_some(Self { width, height, bands, data })
    }

    /// The values of band `b`, row-major.
    pub fn band(&self, b: usize) -> Vec<f32> {
        self.data.iter().skip(b).step_by(self.bands).copied().collect()
    }
}

impl Image {
    pub fn width(&self) -> u32 {
        match self {
            Image::Standard(i) => i.width(),
            Image::Bands(b) => b.width,
        }
    }

    pub fn height(&self) -> u32 {
        match self {
            Image::Standard(i) => i.height(),
            Image::Bands(b) => b.height,
        }
    }

    /// Channels (bands) as stored, alpha included.
    pub fn channels(&self) -> usize {
        match self {
            Image::Standard(i) => i.color().channel_count() as usize,
            Image::Bands(b) => b.bands,
        }
    }

    /// The image crate's image, when that is what this is.
    pub fn as_standard(&self) -> Option<&DynamicImage> {
        match self {
            Image::Standard(i) => Some(i),
            Image::Bands(_) => None,
        }
    }

    /// The image crate's image, when that is what this is.
    pub fn into_standard(self) -> Option<DynamicImage> {
        match self {
            Image::Standard(i) => Some(i),
            Image::Bands(_) => None,
        }
    }

    /// The band stack, when that is what this is.
    pub fn as_bands(&self) -> Option<&BandImage> {
        match self {
            Image::Standard(_) => None,
            Image::Bands(b) => Some(b),
        }
    }

    /// Describes the pixel type for errors, e.g. `Rgb8` or `7 bands`.
    pub fn describe(&self) -> String {
        match self {
            Image::Standard(i) => format!("{:?}", i.color()),
            Image::Bands(b) => format!("{} band{}", b.bands, if b.bands == 1 { "" } else { "s" }),
        }
    }
}

impl From<DynamicImage> for Image {
    fn from(image: DynamicImage) -> Self {
        Image::Standard(image)
    }
}

impl From<BandImage> for Image {
    fn from(bands: BandImage) -> Self {
        Image::Bands(bands)
    }
}
