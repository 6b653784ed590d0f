//! A built-in dataset that needs no files: procedurally drawn shapes, one class per shape.
//!
//! The class is visible only in the shape's geometry; colour, position, size, a small rotation,
//! the background gradient, its texture and the pixel noise are nuisances drawn independently.
//! So a representation that clusters by class must have learned shape, which is what a k-NN
//! check on MAE features against random features measures.

use image::{DynamicImage, RgbImage};
use rand_chacha::ChaCha8Rng;

use crate::dataset::{out_of_range, Dataset, Sample};
use crate::error::{DataError, Result};
use crate::rng::{sample_rng, stream, uniform};
use crate::spec::Split;

/// The classes, in label order.
pub const SHAPES: [&str; 8] =
    ["circle", "ring", "square", "frame", "triangle", "diamond", "cross", "stripes"];

/// `count` images of `size` x `size` pixels. Sample `i` has label `i % 8` (balanced classes)
/// and is drawn from an RNG keyed by (seed, split, i), so it is the same image whatever the
/// count, the access order or the thread; `train` and `test` draw disjoint streams.
#[derive(Debug, Clone)]
pub struct SyntheticShapes {
    count: usize,
    size: u32,
    seed: u64,
    split: Split,
    classes: Vec<String>,
}

impl SyntheticShapes {
    pub fn new(count: usize, size: u32, seed: u64, split: Split) -> Result<Self> {
        if count == 0 {
            return Err(DataError::Config("synthetic dataset needs at least one image".into()));
        }
        if !(8..=4096).contains(&size) {
            return Err(DataError::Config(format!("synthetic image size {size} is outside 8..=4096")));
        }
        let classes = SHAPES.iter().map(|s| s.to_string()).collect();
        Ok(Self { count, size, seed, split, classes })
    }
}

/// Signed distance to an axis-aligned box of half-sizes (bx, by), negative inside.
fn sd_box(x: f64, y: f64, bx: f64, by: f64) -> f64 {
    let (qx, qy) = (x.abs() - bx, y.abs() - by);
    qx.max(0.0).hypot(qy.max(0.0)) + qx.max(qy).min(0.0)
}

/// Signed distance to an equilateral triangle of half-side `r`, centred on its centroid.
fn sd_triangle(x: f64, y: f64, r: f64) -> f64 {
    let k = 3f64.sqrt();
    let (mut px, mut py) = (x.abs() - r, y + r / k);
    if px + k * py > 0.0 {
        (px, py) = ((px - k * py) / 2.0, (-k * px - py) / 2.0);
    }
    px -= px.clamp(-2.0 * r, 0.0);
    -px.hypot(py) * py.signum()
}

/// Signed distance of point (x, y) in the shape's frame (unit "radius") to shape `class`.
fn shape_distance(class: usize, x: f64, y: f64) -> f64 {
    let radius = x.hypot(y);
    match class {
        0 => radius - 1.0,
        1 => (radius - 0.72).abs() - 0.28,
        2 => sd_box(x, y, 0.8, 0.8),
        3 => sd_box(x, y, 0.85, 0.85).max(-sd_box(x, y, 0.45, 0.45)),
        4 => sd_triangle(x, -y, 0.9),
        5 => (x.abs() + y.abs() - 1.0) / 2f64.sqrt(),
        6 => sd_box(x, y, 1.0, 0.3).min(sd_box(x, y, 0.3, 1.0)),
        // Three horizontal bars inside a square.
        _ => sd_box(x, y, 0.9, 0.9).max(((y + 0.3).rem_euclid(0.6) - 0.3).abs() - 0.15),
    }
}

fn luminance(c: [f64; 3]) -> f64 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

fn random_colour(rng: &mut ChaCha8Rng) -> [f64; 3] {
    [uniform(rng, 0.0, 1.0), uniform(rng, 0.0, 1.0), uniform(rng, 0.0, 1.0)]
}

/// Draws one image of shape `class`. The order of the RNG draws is part of the dataset's
/// definition: changing it changes every image.
pub fn draw_shape(class: usize, size: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let s = size as f64;
    // Background: a two-colour gradient with a sinusoidal texture and pixel noise.
    let (c0, c1) = (random_colour(rng), random_colour(rng));
    let theta = uniform(rng, 0.0, std::f64::consts::TAU);
    let (gx, gy) = (theta.cos(), theta.sin());
    let tex_amp = uniform(rng, 0.0, 0.12);
    let tex_freq = uniform(rng, 2.0, 6.0) * std::f64::consts::TAU;
    let tex_angle = uniform(rng, 0.0, std::f64::consts::TAU);
    let tex_phase = uniform(rng, 0.0, std::f64::consts::TAU);
    let noise = uniform(rng, 0.0, 0.08);
    let bg_mean = [(c0[0] + c1[0]) / 2.0, (c0[1] + c1[1]) / 2.0, (c0[2] + c1[2]) / 2.0];
    // Foreground: any colour that stands out from the background in luminance, so the shape is
    // visible in grayscale too.
    let mut fg = random_colour(rng);
    for _ in 0..16 {
        if (luminance(fg) - luminance(bg_mean)).abs() >= 0.3 {
            break;
        }
        fg = random_colour(rng);
    }
    if (luminance(fg) - luminance(bg_mean)).abs() < 0.3 {
        fg = bg_mean.map(|v| if luminance(bg_mean) > 0.5 { v * 0.2 } else { 0.8 + 0.2 * v });
    }
    // Geometry: radius as a fraction of the image, a centre that keeps the shape inside, and a
    // rotation small enough that a square never looks like a diamond (45 degrees apart).
    let r = uniform(rng, 0.2, 0.34);
    let margin = r * 1.08;
    let (cx, cy) = (uniform(rng, margin, 1.0 - margin), uniform(rng, margin, 1.0 - margin));
    let phi = uniform(rng, -0.25, 0.25);
    let (sin, cos) = phi.sin_cos();

    let mut image = RgbImage::new(size, size);
    for (px, py, pixel) in image.enumerate_pixels_mut() {
        let (u, v) = ((px as f64 + 0.5) / s, (py as f64 + 0.5) / s);
        let t = (0.5 + 0.6 * ((u - 0.5) * gx + (v - 0.5) * gy)).clamp(0.0, 1.0);
        let tex = tex_amp * (tex_freq * (u * tex_angle.cos() + v * tex_angle.sin()) + tex_phase).sin();
        // The shape's frame: translate, rotate by -phi, scale to unit radius.
        let (dx, dy) = ((u - cx) / r, (v - cy) / r);
        let (lx, ly) = (cos * dx + sin * dy, -sin * dx + cos * dy);
        // Coverage from the distance in pixels: one pixel of anti-aliasing.
        let alpha = (0.5 - shape_distance(class, lx, ly) * r * s).clamp(0.0, 1.0);
        for c in 0..3 {
            let bg = c0[c] + (c1[c] - c0[c]) * t + tex;
            let jitter = noise * (2.0 * uniform(rng, 0.0, 1.0) - 1.0);
            let value = bg * (1.0 - alpha) + fg[c] * alpha + jitter;
            pixel.0[c] = (value.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    image
}

impl Dataset for SyntheticShapes {
    fn len(&self) -> usize {
        self.count
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.count {
            return Err(out_of_range(index, self));
        }
        let class = index % SHAPES.len();
        let split = match self.split {
            Split::Train => 0,
            Split::Test => 1,
        };
        let mut rng = sample_rng(self.seed, split, index as u64, stream::SYNTHETIC);
        let image = draw_shape(class, self.size, &mut rng);
        Ok(Sample { image: DynamicImage::ImageRgb8(image).into(), label: Some(class as u32) })
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn describe(&self) -> String {
        format!(
            "synthetic shapes {} ({} images of {}x{}, {} classes, seed {})",
            self.split,
            self.count,
            self.size,
            self.size,
            SHAPES.len(),
            self.seed
        )
    }
}
