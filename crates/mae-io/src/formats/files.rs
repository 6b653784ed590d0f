//! Reading weight files: which files a model folder or a shard index names, and the tensors (with
//! our config, when the header has one) of one safetensors file or PyTorch zip pickle.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mae_vit::VitConfig;
use serde_json::Value;

use super::format_error;
use crate::config::MaeConfig;
use crate::error::{MaeError, Result};
use crate::hub::WEIGHT_FILES;
use crate::io::WeightsFile;

/// The weights of a model directory: the first of [`WEIGHT_FILES`] present, else its only
/// weights file (`*.safetensors`, `*.pth`, `*.pt`, `*.bin`).
pub(super) fn weights_in_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    for file in WEIGHT_FILES {
        let path = dir.join(file);
        if path.is_file() {
            if file.ends_with(".index.json") {
                return Ok(shard_names(&path)?.into_iter().map(|s| dir.join(s)).collect());
            }
            return Ok(vec![path]);
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| MaeError::io(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| ["safetensors", "pth", "pt", "bin"].contains(&e))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found),
        0 => Err(format_error(
            dir,
            "model folder",
            format!("it has none of {} (nor another .safetensors / .pth file)", WEIGHT_FILES.join(", ")),
        )),
        _ => Err(format_error(
            dir,
            "model folder",
            format!(
                "it has several weight files and none of the standard names; pass one of them: {}",
                found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The shard files named by a `model.safetensors.index.json`, in order.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| MaeError::io(index, e))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format_error(index, "shard index", e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| format_error(index, "shard index", "it has no `weight_map` object"))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().filter(|f| !f.contains("..") && !f.starts_with('/')).ok_or_else(|| {
            format_error(index, "shard index", format!("`{name}` maps to {file}, not a file name"))
        })?;
        files.insert(file.to_string());
    }
    Ok(files.into_iter().collect())
}

/// Tensors of one file, with our config when the header has it.
pub(super) struct FileTensors {
    pub(super) tensors: HashMap<String, Tensor>,
    pub(super) header: Option<MaeConfig>,
    /// The encoder config of a `mae finetune` classifier.
    pub(super) encoder_header: Option<VitConfig>,
    /// A PyTorch pickle (the paper's `.pth`), not a safetensors file.
    pub(super) pickled: bool,
}

/// Reads a safetensors file or a PyTorch (zip) pickle, by content.
pub(super) fn read_tensors(path: &Path, device: &Device) -> Result<FileTensors> {
    use std::io::Read;
    // The first bytes say what the file is (`read` alone may return fewer than there are).
    let mut magic = Vec::with_capacity(8);
    std::fs::File::open(path)
        .and_then(|f| f.take(8).read_to_end(&mut magic))
        .map_err(|e| MaeError::io(path, e))?;
    let magic = magic.as_slice();
    if magic.starts_with(b"PK\x03\x04") {
        return Ok(FileTensors {
            tensors: crate::torch_zip::read_pickle(path)?,
            header: None,
            encoder_header: None,
            pickled: true,
        });
    }
    if magic.first() == Some(&0x80) && magic.get(1).is_some_and(|p| (2..=5).contains(p)) {
        return Err(format_error(
            path,
            "PyTorch checkpoint",
            "it is in PyTorch's legacy (pre-1.6) pickle format, which cannot be read here; re-save it with \
             `torch.save(torch.load(path), path)` in a recent PyTorch",
        ));
    }
    let pytorch_name = path.extension().is_some_and(|e| matches!(e.to_str(), Some("pth" | "pt" | "bin")));
    if pytorch_name && looks_unlike_safetensors(magic) {
        return Err(format_error(
            path,
            "PyTorch checkpoint",
            "it does not start with the zip signature `PK` of a `torch.save` file (nor is it a safetensors \
             file): it is damaged or not a checkpoint",
        ));
    }
    let file = WeightsFile::read(path, device)?;
    let header = file.mae_config()?;
    let encoder_header = file.classifier_encoder_config()?;
    Ok(FileTensors { tensors: file.tensors, header, encoder_header, pickled: false })
}

/// A safetensors file starts with its header length as a little-endian u64, at most the
/// safetensors crate's 100 MB. A `.pth`/`.bin` file that starts otherwise is not one.
fn looks_unlike_safetensors(magic: &[u8]) -> bool {
    let header_len = magic.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    header_len.is_none_or(|n| n > 100_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small valid safetensors file: one f32 tensor of 4 values.
    fn valid() -> Vec<u8> {
        let t = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &path).unwrap();
        std::fs::read(path).unwrap()
    }

    fn error_for(name: &str, bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        match read_tensors(&path, &Device::Cpu) {
            Ok(_) => panic!("{name}: read"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn damaged_weight_files_say_what_is_wrong_with_them() {
        let good = valid();
        let e = error_for("cut.safetensors", &good[..good.len() - 3]);
        assert!(e.contains("cut.safetensors") && e.contains("truncated"), "{e}");
        let e = error_for("tiny.safetensors", &good[..5]);
        assert!(e.contains("5 bytes, too short"), "{e}");
        let mut absurd = good.clone();
        absurd[..8].copy_from_slice(&(1u64 << 20).to_le_bytes());
        let e = error_for("long.safetensors", &absurd);
        assert!(e.contains("header longer than the whole file"), "{e}");
        absurd[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = error_for("absurd.safetensors", &absurd);
        assert!(e.contains("more than 100 MB"), "{e}");
        // A `.pth` that is neither a zip (torch.save) nor a safetensors file.
        let e = error_for("model.pth", b"this is not a checkpoint at all");
        assert!(e.contains("model.pth") && e.contains("zip signature"), "{e}");
        // A safetensors file named `.bin` still reads (some hubs do that).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), &good).unwrap();
        assert!(read_tensors(&dir.path().join("w.bin"), &Device::Cpu).is_ok());
    }
}
