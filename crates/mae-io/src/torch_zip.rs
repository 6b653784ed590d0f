//! The state dict of a `torch.save` file (the zip format of PyTorch 1.6 and later), read with
//! candle's pickle reader.
//!
//! Reading such a file runs no code: candle's reader interprets the pickle opcodes itself, and
//! `GLOBAL` / `REDUCE` (what `torch.load` would import and call) only record class names as
//! data. What a crafted file could still do is declare a tensor far larger than the bytes it
//! holds: candle allocates a tensor's full size before reading it. So every tensor's declared
//! size is checked against its data entry in the archive, and each entry against the file's
//! own size, before any tensor is read.

use std::collections::HashMap;
use std::path::Path;

use candle_core::pickle::{PthTensors, TensorInfo};
use candle_core::Tensor;

use crate::error::{MaeError, Result};

/// Deflate cannot expand data by more than about 1032:1; `torch.save` stores entries as they are.
const MAX_DEFLATE_RATIO: u64 = 1032;

fn bad(path: &Path, message: String) -> MaeError {
    MaeError::Format { path: path.to_path_buf(), what: "PyTorch checkpoint", message }
}

/// The state dict of a `torch.save` file: under `"model"` (the paper's checkpoints), under
/// `"state_dict"`, or at the top (`pytorch_model.bin`).
pub(crate) fn read_pickle(path: &Path) -> Result<HashMap<String, Tensor>> {
    let mut last_error = String::new();
    for key in [Some("model"), Some("state_dict"), None] {
        let pth = match PthTensors::new(path, key) {
            Ok(pth) => pth,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        if pth.tensor_infos().is_empty() {
            continue;
        }
        let mut names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
        names.sort();
        let entries = entry_sizes(path)?;
        for name in &names {
            check_declared_size(path, &pth.tensor_infos()[name], &entries)?;
        }
        let mut tensors = HashMap::with_capacity(names.len());
        for name in names {
            match pth.get(&name) {
                Ok(Some(t)) => {
                    tensors.insert(name, t);
                }
                Ok(None) => {}
                Err(e) => return Err(bad(path, format!("tensor `{name}`: {e}"))),
            }
        }
        return Ok(tensors);
    }
    Err(bad(
        path,
        format!(
            "no state dict in it (looked under \"model\", under \"state_dict\" and at the top level){}",
            if last_error.is_empty() { String::new() } else { format!(": {last_error}") }
        ),
    ))
}

/// The most bytes each entry of the archive can yield: its declared size, bounded by what the
/// file's own size allows.
fn entry_sizes(path: &Path) -> Result<HashMap<String, u64>> {
    let file = std::fs::File::open(path).map_err(|e| MaeError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| MaeError::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(path, format!("not a readable zip archive: {e}")))?;
    let mut sizes = HashMap::with_capacity(zip.len());
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| bad(path, format!("zip entry {i}: {e}")))?;
        let bound = match entry.compression() {
            zip::CompressionMethod::Stored => entry.compressed_size().min(file_len),
            _ => entry.compressed_size().min(file_len).saturating_mul(MAX_DEFLATE_RATIO),
        };
        let name = entry.name().map_err(|e| bad(path, format!("zip entry {i}: {e}")))?.to_string();
        sizes.insert(name, entry.size().min(bound));
    }
    Ok(sizes)
}

fn check_declared_size(path: &Path, info: &TensorInfo, entries: &HashMap<String, u64>) -> Result<()> {
    let name = &info.name;
    let Some(&available) = entries.get(&info.path) else {
        return Err(bad(path, format!("tensor `{name}`: its data `{}` is not in the archive", info.path)));
    };
    let needed = (info.layout.start_offset() as u64)
        .checked_add(info.layout.shape().elem_count() as u64)
        .and_then(|n| n.checked_mul(info.dtype.size_in_bytes() as u64));
    match needed {
        Some(needed) if needed <= available => Ok(()),
        _ => Err(bad(
            path,
            format!(
                "tensor `{name}` declares shape {:?} of {:?} (offset {}), more than the {available} \
                 bytes of its data `{}`: the file is damaged or not a real checkpoint",
                info.layout.dims(),
                info.dtype,
                info.layout.start_offset(),
                info.path
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/official_tiny.pth")
    }

    /// A copy of the fixture with `entry` cut to `keep` bytes (or left out when `None`).
    fn damaged(dir: &Path, entry: &str, keep: Option<usize>) -> std::path::PathBuf {
        let mut src = zip::ZipArchive::new(std::fs::File::open(fixture()).expect("fixture")).expect("zip");
        let out = dir.join("damaged.pth");
        let mut dst = zip::ZipWriter::new(std::fs::File::create(&out).expect("create"));
        let options =
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for i in 0..src.len() {
            let mut f = src.by_index(i).expect("entry");
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).expect("read");
            let name = f.name().expect("entry name").to_string();
            if name.ends_with(entry) {
                match keep {
                    Some(n) => bytes.truncate(n),
                    None => continue,
                }
            }
            dst.start_file(name, options).expect("start");
            dst.write_all(&bytes).expect("write");
        }
        dst.finish().expect("finish");
        out
    }

    #[test]
    fn the_paper_checkpoint_fixture_reads() -> Result<()> {
        let tensors = read_pickle(&fixture())?;
        assert!(tensors.len() > 10 && tensors.contains_key("cls_token"), "{:?}", tensors.keys());
        Ok(())
    }

    #[test]
    fn a_tensor_larger_than_its_data_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = damaged(dir.path(), "/data/1", Some(8));
        let err = read_pickle(&path).expect_err("truncated data").to_string();
        assert!(err.contains("declares shape") && err.contains("more than the 8 bytes"), "{err}");
    }

    #[test]
    fn a_tensor_whose_data_is_missing_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = damaged(dir.path(), "/data/1", None);
        let err = read_pickle(&path).expect_err("missing data").to_string();
        assert!(err.contains("is not in the archive"), "{err}");
    }
}
