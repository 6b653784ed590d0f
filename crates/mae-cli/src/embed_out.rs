//! The files `mae embed` writes: safetensors, NumPy `.npy` or CSV, each with the file name (or,
//! for datasets without file names, the index) of every row beside its vector.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::ValueEnum;

/// `mae embed --format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum EmbedFormat {
    // (No doc comments on the values: clap would turn every --help into its long form.)
    #[default]
    Safetensors,
    Npy,
    Csv,
}

/// What `mae embed` computed, row by row.
pub struct Embeddings {
    /// `[N, D]` f32 on the CPU.
    pub features: Tensor,
    /// One per row for a labeled dataset, else `None`.
    pub labels: Option<Vec<u32>>,
    /// The dataset index of each row (unreadable samples are skipped, so rows are not 0..N).
    pub indices: Vec<usize>,
    /// Each row's file name, when the dataset has file names (`Dataset::sample_name`).
    pub names: Option<Vec<String>>,
}

impl Embeddings {
    /// The names column: the file names, or the indices as text.
    fn row_names(&self) -> Vec<String> {
        match &self.names {
            Some(names) => names.clone(),
            None => self.indices.iter().map(|i| i.to_string()).collect(),
        }
    }
}

/// Writes `embeddings` to `out` as `format`; returns every file written.
pub fn write(format: EmbedFormat, out: &Path, embeddings: &Embeddings) -> Result<Vec<PathBuf>> {
    match format {
        EmbedFormat::Safetensors => write_safetensors(out, embeddings).map(|()| vec![out.to_path_buf()]),
        EmbedFormat::Npy => write_npy_files(out, embeddings),
        EmbedFormat::Csv => write_csv(out, embeddings).map(|()| vec![out.to_path_buf()]),
    }
}

/// `features` [N, D], `labels` [N] (when labeled) and `indices` [N] (i64, the dataset index of
/// each row), with the file names as a JSON array under the metadata key `names` when the
/// dataset has them (safetensors tensors hold numbers only).
fn write_safetensors(out: &Path, e: &Embeddings) -> Result<()> {
    let n = e.indices.len();
    let mut tensors = HashMap::from([("features".to_string(), e.features.clone())]);
    if let Some(labels) = &e.labels {
        tensors.insert("labels".into(), Tensor::from_slice(labels, n, &Device::Cpu)?);
    }
    let indices: Vec<i64> = e.indices.iter().map(|&i| i as i64).collect();
    tensors.insert("indices".into(), Tensor::from_vec(indices, n, &Device::Cpu)?);
    let mut sorted: Vec<(String, Tensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = match &e.names {
        Some(names) => Some(HashMap::from([("names".to_string(), serde_json::to_string(names)?)])),
        None => None,
    };
    let bytes = safetensors::serialize(sorted, metadata)?;
    std::fs::write(out, bytes).with_context(|| format!("--out {}", out.display()))
}

/// The `.npy` (format version 1.0) bytes of a C-order array of `shape` whose little-endian
/// elements are `data`, of NumPy type `descr` (`<f4`, `<u4`).
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces and ended by a
    // newline to a multiple of 64 bytes, as numpy writes it (and some readers require).
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    // A version 1.0 header is at most 65535 bytes; ours is a few dozen.
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// `out` (`[N, D]` `<f4`), `<stem>.txt` (one name a line, row by row) and, when labeled,
/// `<stem>.labels.npy` (`[N]` `<u4`).
fn write_npy_files(out: &Path, e: &Embeddings) -> Result<Vec<PathBuf>> {
    let names_path = out.with_extension("txt");
    if names_path == out {
        bail!(
            "--out {}: a .npy output needs a name not ending in .txt (the names go to a .txt beside it)",
            out.display()
        );
    }
    let (n, d) = e.features.dims2()?;
    let values = e.features.flatten_all()?.to_vec1::<f32>()?;
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out, npy_bytes("<f4", &[n, d], &data))
        .with_context(|| format!("--out {}", out.display()))?;
    // One line a row: a line break inside a file name would shift every later row.
    let lines: String = e.row_names().iter().map(|name| name.replace(['\n', '\r'], " ") + "\n").collect();
    std::fs::write(&names_path, lines).with_context(|| format!("{}", names_path.display()))?;
    let mut written = vec![out.to_path_buf(), names_path];
    if let Some(labels) = &e.labels {
        let path = out.with_extension("labels.npy");
        let data: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, npy_bytes("<u4", &[labels.len()], &data))
            .with_context(|| format!("{}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// A header `name[,label],f0,...,f{D-1}`, then a row per vector. Floats are written in Rust's
/// shortest form that reads back to the same f32.
fn write_csv(out: &Path, e: &Embeddings) -> Result<()> {
    use std::fmt::Write;
    let (n, d) = e.features.dims2()?;
    let values = e.features.flatten_all()?.to_vec1::<f32>()?;
    let names = e.row_names();
    let mut text = String::from("name");
    if e.labels.is_some() {
        text.push_str(",label");
    }
    for j in 0..d {
        write!(text, ",f{j}")?;
    }
    text.push('\n');
    for r in 0..n {
        text.push_str(&csv_field(&names[r]));
        if let Some(labels) = &e.labels {
            write!(text, ",{}", labels[r])?;
        }
        for v in &values[r * d..(r + 1) * d] {
            write!(text, ",{v}")?;
        }
        text.push('\n');
    }
    std::fs::write(out, text).with_context(|| format!("--out {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_padded_to_64_bytes() {
        let bytes = npy_bytes("<f4", &[2, 3], &[0u8; 24]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(
            header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"),
            "{header}"
        );
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + len + 24);
        let one = npy_bytes("<u4", &[5], &[0u8; 20]);
        assert!(std::str::from_utf8(&one[10..74]).unwrap().contains("'shape': (5,), }"));
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a/b.png"), "a/b.png");
        assert_eq!(csv_field("a,b.png"), "\"a,b.png\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
