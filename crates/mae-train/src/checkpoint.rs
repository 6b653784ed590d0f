//! Checkpoints: one folder per save, `checkpoints/step-00000100/` holding `model.safetensors`
//! (written by the model, so its own loaders read it), `optimizer.safetensors` (AdamW moments) and
//! `state.json` (step, loader position, seed, run config, version).
//!
//! A save is atomic: everything is written and fsynced into a hidden temporary folder, which is
//! then renamed into place. A run killed mid-save leaves only the temporary folder, which readers
//! ignore and the next save removes; the previous checkpoint stays intact.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Format version of `state.json`.
pub const STATE_VERSION: u32 = 1;

/// `state.json`: where training stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub version: u32,
    /// The crate version that wrote it.
    pub written_by: String,
    /// Optimizer steps done.
    pub step: usize,
    /// Loader position of the next micro-batch.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub seed: u64,
    pub world_size: usize,
    /// Mean training loss since the previous checkpoint (for `best`).
    pub recent_loss: Option<f64>,
    /// The run's resolved configuration, opaque to the trainer.
    pub run_config: serde_json::Value,
}

/// The `checkpoints/` folder of a run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    root: PathBuf,
}

fn sync_dir(dir: &Path) {
    // Persist renames (best effort: not every platform can open a directory).
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| TrainError::io(path, e))
}

/// Writes named tensors as a safetensors file (fsynced).
pub fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut sorted: Vec<(&String, Tensor)> = Vec::with_capacity(tensors.len());
    for (k, v) in tensors {
        sorted.push((k, v.to_device(&Device::Cpu)?));
    }
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let bytes =
        safetensors::serialize(sorted, None).map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    write_synced(path, &bytes)
}

/// Reads a safetensors file onto `device`, naming the file in errors.
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| TrainError::checkpoint(path, format!("not a readable safetensors file: {e}")))
}

/// Sets `vars` from the tensors of `path` (same names), checking every shape.
pub fn load_vars(path: &Path, vars: &[(String, Var)]) -> Result<()> {
    let device = vars.first().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu);
    let tensors = read_tensors(path, &device)?;
    // Every tensor is checked before any variable is set, so a bad file changes nothing.
    let mut checked = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let t = tensors
            .get(name)
            .ok_or_else(|| TrainError::checkpoint(path, format!("tensor `{name}` is missing")))?;
        if t.dims() != var.dims() {
            return Err(TrainError::checkpoint(
                path,
                format!("tensor `{name}` has shape {:?}, the model needs {:?}", t.dims(), var.dims()),
            ));
        }
        let t = t.to_dtype(var.dtype())?;
        let f = t.to_dtype(candle_core::DType::F32)?;
        // x - x is 0 for every finite x and NaN for NaN and +-inf.
        if f.sub(&f)?.sum_all()?.to_scalar::<f32>()? != 0.0 {
            return Err(TrainError::checkpoint(
                path,
                format!("tensor `{name}` holds NaN or infinite values"),
            ));
        }
        checked.push((var, t));
    }
    for (var, t) in checked {
        var.set(&t)?;
    }
    Ok(())
}

impl Checkpoints {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Saves a checkpoint for `state.step`. `write_model` writes the model file at the given path.
    pub fn save(
        &self,
        state: &TrainState,
        write_model: impl FnOnce(&Path) -> Result<()>,
        optimizer: &HashMap<String, Tensor>,
    ) -> Result<PathBuf> {
        fs::create_dir_all(&self.root).map_err(|e| TrainError::io(&self.root, e))?;
        let name = format!("step-{:08}", state.step);
        let tmp = self.root.join(format!(".tmp-{name}"));
        let dest = self.root.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        let written = (|| {
            fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
            write_model(&tmp.join("model.safetensors"))?;
            if crate::fault::abort_in_checkpoint(state.step) {
                std::process::abort();
            }
            write_tensors(&tmp.join("optimizer.safetensors"), optimizer)?;
            let json =
                serde_json::to_vec_pretty(state).map_err(|e| TrainError::checkpoint(&tmp, e.to_string()))?;
            write_synced(&tmp.join("state.json"), &json)?;
            sync_dir(&tmp);
            Ok(())
        })();
        if let Err(e) = written {
            // A partial checkpoint is never read, and it holds the space the next try needs.
            let _ = fs::remove_dir_all(&tmp);
            if !is_out_of_space(&e) {
                return Err(e);
            }
            return Err(TrainError::checkpoint(
                &dest,
                format!(
                    "no space left on the device ({e}); a checkpoint of this run needs about {} MB. \
                     The partial write was removed and the previous checkpoints are intact: free \
                     some space (or lower --keep-last) and resume",
                    checkpoint_bytes(optimizer).div_ceil(1 << 20)
                ),
            ));
        }
        if dest.exists() {
            fs::remove_dir_all(&dest).map_err(|e| TrainError::io(&dest, e))?;
        }
        fs::rename(&tmp, &dest).map_err(|e| TrainError::io(&dest, e))?;
        sync_dir(&self.root);
        Ok(dest)
    }

    /// Complete checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TrainError::io(&self.root, e)),
        };
        let mut out: Vec<(usize, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.parse().ok()?;
                let path = e.path();
                path.join("state.json").is_file().then_some((step, path))
            })
            .collect();
        out.sort();
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    /// The newest complete checkpoint.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        Ok(self.list()?.pop())
    }

    /// Removes all but the newest `keep` checkpoints (and leftovers of interrupted saves).
    pub fn prune(&self, keep: usize) -> Result<()> {
        let all = self.list()?;
        for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
            // Renamed out of the `step-*` names first: a process killed in the middle of
            // `remove_dir_all` leaves a `.tmp-*` folder (removed below, next time), never a
            // half-deleted checkpoint that still looks complete.
            let name = old.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let doomed = self.root.join(format!(".tmp-pruned-{name}"));
            fs::rename(old, &doomed).map_err(|e| TrainError::io(old, e))?;
            fs::remove_dir_all(&doomed).map_err(|e| TrainError::io(&doomed, e))?;
        }
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.filter_map(|e| e.ok()) {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// Makes `best/` hold the files of `checkpoint` (replacing the previous best): hard links
    /// where the file system has them, so the best checkpoint costs no second copy on disk
    /// (checkpoint files are never rewritten in place, and a pruned checkpoint's files live on
    /// through the links); copies elsewhere.
    pub fn mark_best(&self, checkpoint: &Path) -> Result<()> {
        let tmp = self.root.join(".tmp-best");
        let best = self.root.join("best");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            let (from, to) = (checkpoint.join(file), tmp.join(file));
            fs::hard_link(&from, &to)
                .or_else(|_| fs::copy(&from, &to).map(|_| ()))
                .map_err(|e| TrainError::io(&from, e))?;
        }
        // The old best leaves by a rename too, so a kill at any moment leaves whole folders.
        let old = self.root.join(".tmp-best-old");
        if best.exists() {
            let _ = fs::remove_dir_all(&old);
            fs::rename(&best, &old).map_err(|e| TrainError::io(&best, e))?;
        }
        fs::rename(&tmp, &best).map_err(|e| TrainError::io(&best, e))?;
        sync_dir(&self.root);
        let _ = fs::remove_dir_all(&old);
        Ok(())
    }
}

/// Whether `e` is the OS saying the disk (or the user's quota) is full.
fn is_out_of_space(e: &TrainError) -> bool {
    match e {
        TrainError::Io { error, .. } => {
            error.kind() == std::io::ErrorKind::StorageFull || error.raw_os_error() == Some(28)
        }
        // Errors of the model's writer arrive as text.
        other => other.to_string().contains("No space left on device"),
    }
}

/// About what one checkpoint takes on disk: the optimizer state (AdamW's two moments) and the
/// model, which is half of it.
fn checkpoint_bytes(optimizer: &HashMap<String, Tensor>) -> usize {
    let state: usize = optimizer.values().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
    state + state / 2
}

/// Reads `state.json` of a checkpoint folder.
pub fn read_state(checkpoint: &Path) -> Result<TrainState> {
    let path = checkpoint.join("state.json");
    let text = fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&path, format!("not a valid training state: {e}")))?;
    if state.version > STATE_VERSION {
        return Err(TrainError::checkpoint(
            &path,
            format!(
                "written by a newer version (state format {}, this build reads {STATE_VERSION})",
                state.version
            ),
        ));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainState {
        TrainState {
            version: STATE_VERSION,
            written_by: "test".into(),
            step,
            epoch: 0,
            batch_in_epoch: 0,
            seed: 0,
            world_size: 1,
            recent_loss: None,
            run_config: serde_json::Value::Null,
        }
    }

    fn moments() -> HashMap<String, Tensor> {
        let m = Tensor::zeros((1024, 512), candle_core::DType::F32, &Device::Cpu).expect("zeros");
        HashMap::from([("m".to_string(), m.clone()), ("v".to_string(), m)])
    }

    fn write_model(path: &Path) -> Result<()> {
        write_synced(path, b"model")
    }

    fn leftovers(root: &Path) -> Vec<String> {
        fs::read_dir(root)
            .expect("checkpoints folder")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect()
    }

    #[test]
    fn a_full_disk_removes_the_partial_write_and_says_how_much_space_is_needed() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
        let ckpts = Checkpoints::new(dir.path().join("checkpoints"));
        let first = ckpts.save(&state(1), write_model, &moments())?;
        let full = |p: &Path| -> Result<()> {
            fs::write(p, b"partial").map_err(|e| TrainError::io(p, e))?;
            Err(TrainError::io(p, std::io::Error::from_raw_os_error(28)))
        };
        let err = ckpts.save(&state(2), full, &moments()).expect_err("the disk is full").to_string();
        // Two moments of 2 MiB each, and a model of half their size.
        assert!(err.contains("no space left") && err.contains("about 6 MB"), "{err}");
        assert_eq!(err.matches("os error 28").count(), 1, "{err}");
        assert!(leftovers(ckpts.root()).is_empty());
        assert_eq!(ckpts.list()?, vec![first.clone()]);
        assert_eq!(
            fs::read(first.join("model.safetensors")).map_err(|e| TrainError::io(&first, e))?,
            b"model"
        );
        Ok(())
    }

    #[test]
    fn other_write_errors_pass_through_and_leave_nothing_behind() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
        let ckpts = Checkpoints::new(dir.path());
        let broken =
            |_: &Path| -> Result<()> { Err(TrainError::Model("the model cannot be written".into())) };
        let err = ckpts.save(&state(3), broken, &moments()).expect_err("fails").to_string();
        assert_eq!(err, "the model cannot be written");
        assert!(leftovers(ckpts.root()).is_empty());
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn best_shares_the_files_of_its_checkpoint_and_outlives_it() -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
        let ckpts = Checkpoints::new(dir.path());
        let step = ckpts.save(&state(4), write_model, &moments())?;
        ckpts.mark_best(&step)?;
        let inode = |p: PathBuf| fs::metadata(&p).map(|m| m.ino()).map_err(|e| TrainError::io(p, e));
        let best = dir.path().join("best");
        assert_eq!(inode(best.join("optimizer.safetensors"))?, inode(step.join("optimizer.safetensors"))?);
        ckpts.save(&state(5), write_model, &moments())?;
        ckpts.prune(1)?;
        assert!(!step.exists());
        assert_eq!(read_state(&best)?.step, 4);
        assert_eq!(read_tensors(&best.join("optimizer.safetensors"), &Device::Cpu)?.len(), 2);
        Ok(())
    }
}
