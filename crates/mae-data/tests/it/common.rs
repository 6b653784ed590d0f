use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, RgbImage};

/// The repository's real test data (`data/` at the repository root; data/README.md).
pub fn repo_data() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data"))
}

/// The decompressed bytes of one of the repository's gzipped MNIST IDX files.
pub fn mnist_idx_bytes(name: &str) -> Vec<u8> {
    use std::io::Read;
    let file = std::fs::File::open(repo_data().join("mnist").join(format!("{name}.gz"))).unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(file).read_to_end(&mut raw).unwrap();
    raw
}

pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A small RGB test card with structure in both directions, so crops and flips are visible.
pub fn test_card(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width.max(1)) as u8,
            (y * 255 / height.max(1)) as u8,
            ((x + y) % 7 * 30) as u8,
        ])
    }))
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A well-formed PNG header claiming `width` x `height` RGB pixels, with a tiny IDAT: a
/// decompression bomb as far as the header goes.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// An IDX file of u8 elements with the given magic, dimensions and body.
pub fn idx(magic: [u8; 4], dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// All values of a CPU tensor, flattened.
pub fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Copies the first `per_class` digits of classes `0..classes` of the repository's
/// `data/mnist-png/train` into `dir/<class>/` (a folder dataset); returns (file, class) in the
/// folder dataset's order.
pub fn copy_digits(dir: &Path, classes: u32, per_class: usize) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for class in 0..classes {
        let from = repo_data().join("mnist-png/train").join(class.to_string());
        let mut names: Vec<PathBuf> = std::fs::read_dir(&from).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for src in names.into_iter().take(per_class) {
            let dst = dir.join(class.to_string()).join(src.file_name().unwrap());
            write(&dst, &std::fs::read(&src).unwrap());
            out.push((dst, class));
        }
    }
    out
}

/// A WebDataset sample: its key and its members as (extension, bytes).
pub type TarSample<'a> = (String, Vec<(&'a str, Vec<u8>)>);

/// A tar shard at `path` of the given samples.
pub fn write_shard(path: &Path, samples: &[TarSample<'_>]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (key, members) in samples {
        for (ext, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, format!("{key}.{ext}"), bytes.as_slice()).unwrap();
        }
    }
    builder.into_inner().unwrap();
}

/// The messages of the `tracing` events emitted on this thread while `f` runs.
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = tracing::subscriber::with_default(Capture(logs.clone()), f);
    let logs = logs.lock().unwrap().clone();
    (out, logs)
}

struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = String::new();
        event.record(&mut Message(&mut text));
        self.0.lock().unwrap().push(format!("{} {text}", event.metadata().level()));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A TIFF sample type: (BitsPerSample, SampleFormat 1 unsigned / 2 signed / 3 float).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TiffSample {
    U8,
    U16,
    U32,
    I16,
    F32,
}

/// One page of an uncompressed, MinIsBlack TIFF: `values` interleaved by pixel
/// (`(y * width + x) * samples + s`), stored chunky or planar (one strip per plane).
pub struct TiffPage<'a> {
    pub width: u32,
    pub height: u32,
    pub samples: u16,
    pub sample: TiffSample,
    pub planar: bool,
    pub values: &'a [f64],
}

/// A little-endian classic TIFF of `pages`, written by hand so that the tests control every
/// tag (the image crate's encoder writes neither multi-band, signed, planar nor paged files).
pub fn tiff_bytes(pages: &[TiffPage<'_>]) -> Vec<u8> {
    let mut out = b"II*\0\0\0\0\0".to_vec();
    let mut link = 4; // where the offset of the next IFD goes
    for page in pages {
        let (bits, format) = match page.sample {
            TiffSample::U8 => (8u16, 1u16),
            TiffSample::U16 => (16, 1),
            TiffSample::U32 => (32, 1),
            TiffSample::I16 => (16, 2),
            TiffSample::F32 => (32, 3),
        };
        let n = page.samples as usize;
        let pixels = (page.width * page.height) as usize;
        assert_eq!(page.values.len(), pixels * n);
        let order: Vec<usize> = if page.planar {
            (0..n).flat_map(|s| (0..pixels).map(move |p| p * n + s)).collect()
        } else {
            (0..pixels * n).collect()
        };
        let data_at = out.len() as u32;
        for i in order {
            let v = page.values[i];
            match page.sample {
                TiffSample::U8 => out.push(v as u8),
                TiffSample::U16 => out.extend((v as u16).to_le_bytes()),
                TiffSample::U32 => out.extend((v as u32).to_le_bytes()),
                TiffSample::I16 => out.extend((v as i16).to_le_bytes()),
                TiffSample::F32 => out.extend((v as f32).to_le_bytes()),
            }
        }
        let strips = if page.planar { n } else { 1 };
        let strip_len = (out.len() as u32 - data_at) / strips as u32;
        // Arrays that do not fit in an entry's 4 bytes go here, before the IFD.
        let array = |out: &mut Vec<u8>, values: Vec<u32>, short: bool| -> (u32, u32) {
            let bytes: Vec<u8> = if short {
                values.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect()
            } else {
                values.iter().flat_map(|&v| v.to_le_bytes()).collect()
            };
            if bytes.len() <= 4 {
                let mut inline = [0u8; 4];
                inline[..bytes.len()].copy_from_slice(&bytes);
                (values.len() as u32, u32::from_le_bytes(inline))
            } else {
                if out.len() % 2 == 1 {
                    out.push(0);
                }
                let at = out.len() as u32;
                out.extend(bytes);
                (values.len() as u32, at)
            }
        };
        let bits_entry = array(&mut out, vec![bits as u32; n], true);
        let format_entry = array(&mut out, vec![format as u32; n], true);
        let offsets = array(&mut out, (0..strips as u32).map(|s| data_at + s * strip_len).collect(), false);
        let counts = array(&mut out, vec![strip_len; strips], false);
        const SHORT: u16 = 3;
        const LONG: u16 = 4;
        let entries: [(u16, u16, (u32, u32)); 11] = [
            (256, LONG, (1, page.width)),
            (257, LONG, (1, page.height)),
            (258, SHORT, bits_entry),
            (259, SHORT, (1, 1)),
            (262, SHORT, (1, 1)),
            (273, LONG, offsets),
            (277, SHORT, (1, n as u32)),
            (278, LONG, (1, page.height)),
            (279, LONG, counts),
            (284, SHORT, (1, if page.planar { 2 } else { 1 })),
            (339, SHORT, format_entry),
        ];
        if out.len() % 2 == 1 {
            out.push(0);
        }
        let ifd_at = out.len() as u32;
        out[link..link + 4].copy_from_slice(&ifd_at.to_le_bytes());
        out.extend((entries.len() as u16).to_le_bytes());
        for (tag, kind, (count, value)) in entries {
            out.extend(tag.to_le_bytes());
            out.extend(kind.to_le_bytes());
            out.extend(count.to_le_bytes());
            out.extend(value.to_le_bytes());
        }
        link = out.len();
        out.extend(0u32.to_le_bytes());
    }
    out
}
