//! Seed inputs: the repository's own small files (fixtures/, data/), read at run time, and
//! inputs generated from them in memory (decompressed IDX files, downscaled photos in every
//! format the decoder takes, CIFAR-10 records, small safetensors files with our headers).

use std::io::{Cursor, Read};
use std::path::PathBuf;

use mae_data::image::{self, DynamicImage, ImageFormat};

/// One seed input and where it came from.
#[derive(Debug, Clone)]
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Seed {
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self { name: name.into(), bytes }
    }
}

/// The repository root (the seeds' files are relative to it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A repository file as a seed named by its path; `None` when absent (a partial checkout).
pub fn file(relative: &str) -> Option<Seed> {
    std::fs::read(repo_root().join(relative)).ok().map(|bytes| Seed::new(relative, bytes))
}

/// The repository files among `paths` that exist.
pub fn files(paths: &[&str]) -> Vec<Seed> {
    paths.iter().filter_map(|p| file(p)).collect()
}

/// The decompressed contents of a gzip file of the repository.
pub fn gunzip(relative: &str) -> Option<Vec<u8>> {
    let gz = std::fs::read(repo_root().join(relative)).ok()?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).ok()?;
    Some(out)
}

/// An IDX file of u8 elements: magic, big-endian dims, body.
pub fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// A repository image, decoded.
pub fn photo(relative: &str) -> Option<DynamicImage> {
    let bytes = std::fs::read(repo_root().join(relative)).ok()?;
    image::load_from_memory(&bytes).ok()
}

/// `image` encoded as `format`; `None` when the encoder refuses it.
pub fn encode(image: &DynamicImage, format: ImageFormat) -> Option<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).ok()?;
    Some(out.into_inner())
}

/// A safetensors file: `tensors` as (name, dtype, shape), data filled with a byte pattern, and
/// optional header metadata.
pub fn safetensors(tensors: &[(&str, &str, &[usize])], metadata: &[(&str, String)]) -> Vec<u8> {
    let size_of = |dtype: &str| match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * size_of(dtype);
        let info =
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes] });
        header.insert(name.to_string(), info);
        offset += bytes;
    }
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> =
            metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(v.clone()))).collect();
        header.insert("__metadata__".into(), meta.into());
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    // A small float-ish pattern: finite in every float dtype.
    out.extend((0..offset).map(|i| if i % 4 == 3 { 0x3c } else { (i % 7) as u8 }));
    out
}
