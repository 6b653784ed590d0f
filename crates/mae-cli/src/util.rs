//! Small pieces the commands share: devices, weights resolution, logging, run folder names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use mae::MaskedAutoencoder;

/// `warn` and above by default; `RUST_LOG` overrides.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// candle runs element-wise ops on its own spinning thread pool next to gemm's rayon pool; on a
/// small CPU the two fight over the cores (training steps several times slower; the numbers are
/// in docs/benchmarks.md). Unless the user chose, element-wise ops run on one thread and matmuls
/// on all cores.
///
/// Under an MPI launcher with several ranks on this node, the matmul threads (`RAYON_NUM_THREADS`,
/// unless set) are the cores this process may use divided by the ranks of the node, so that the
/// ranks do not oversubscribe the cores between them.
pub fn default_cpu_threads() {
    // Safe: called first thing in main, before any other thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        if let Some(local) = local_ranks().filter(|&n| n > 1) {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            std::env::set_var("RAYON_NUM_THREADS", (cores / local).max(1).to_string());
        }
    }
}

/// mimalloc option `mi_option_purge_delay` (the same position in mimalloc v2's and v3's
/// `mi_option_e`; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory in the process instead of returning it to the OS after mimalloc's purge
/// delay (1000 ms in the mimalloc 3 we build, about one CPU step): a training step frees and
/// allocates the same large tensors every step, and every returned page comes back zeroed by the
/// kernel (`clear_page_erms`). docs/benchmarks.md has the profile and the gain.
/// The resident size stays at its peak, which a training process reaches every step anyway.
/// A user's `MIMALLOC_PURGE_DELAY` wins (mimalloc read it at start-up).
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // Safe: sets one of mimalloc's options, which it reads atomically on every purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Ranks of this job on this node, as the MPI launcher says (Open MPI, MPICH / Intel MPI).
pub fn local_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.trim().parse().ok()))
}

/// `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>().with_context(|| format!("--device {spec}: `{i}` is not a device number"))?,
        ),
        None => (spec, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(index).with_context(|| {
            format!("--device {spec}: no CUDA device (a CUDA build is `cargo xtask build --cuda --bins`)")
        }),
        "metal" => Device::new_metal(index).with_context(|| {
            format!("--device {spec}: no Metal device (a Metal build needs macOS and --features metal)")
        }),
        _ => bail!("--device {spec}: expected cpu, cuda, cuda:N or metal"),
    }
}

/// One candle device per GPU for the whole process: the NCCL communicator and the model must
/// share the device's stream, and its kernels are loaded once.
fn cuda_device(index: usize) -> candle_core::Result<Device> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static DEVICES: Mutex<Option<HashMap<usize, Device>>> = Mutex::new(None);
    let mut devices = DEVICES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let devices = devices.get_or_insert_with(HashMap::new);
    if let Some(device) = devices.get(&index) {
        return Ok(device.clone());
    }
    let device = Device::new_cuda(index)?;
    devices.insert(index, device.clone());
    Ok(device)
}

/// The pixel statistics (`--mean`/`--std`) of the `mae pretrain` run that `weights` come from
/// (a run folder, a checkpoint folder in it, or a file of one: its `config.toml` is found up to
/// three folders up), when they fit `channels`. `None` for other weights (hub ids, exports,
/// runs that used the defaults): their evaluation uses the default of their channel count.
pub fn run_normalize(weights: Option<&Path>, channels: usize) -> Option<mae_data::Normalize> {
    #[derive(serde::Deserialize)]
    struct Stats {
        mean: Option<Vec<f32>>,
        std: Option<Vec<f32>>,
    }
    let path = weights.filter(|p| p.exists())?;
    let start = if path.is_file() { path.parent()? } else { path };
    // A run folder holds both config.toml and checkpoints/ (a hub id or a model folder never
    // reaches the working directory's config.toml this way).
    let run = start
        .ancestors()
        .take(4)
        .filter(|dir| !dir.as_os_str().is_empty())
        .find(|dir| dir.join("config.toml").is_file() && dir.join("checkpoints").is_dir())?;
    let file = run.join("config.toml");
    let stats: Stats = toml::from_str(&std::fs::read_to_string(&file).ok()?).ok()?;
    let (mean, std) = (stats.mean?, stats.std?);
    let normalize = mae_data::Normalize::new(mean, std);
    if normalize.channels() != channels || normalize.std.len() != channels {
        return None;
    }
    if normalize != mae_data::Normalize::default_for(channels) {
        eprintln!(
            "mae: normalising pixels with the run's --mean {:?} --std {:?} ({})",
            normalize.mean,
            normalize.std,
            file.display()
        );
    }
    Some(normalize)
}

/// The encoder to evaluate, the one way every command gets it: the encoder of `--weights`
/// (anything [`load_model`] reads, and encoder-only weights: timm's MAE tags, Hugging Face ViT, the
/// paper's `mae_pretrain_*.pth`, a `mae finetune` run), or with `--preset` instead a freshly
/// initialised one, seeded by `seed`: the random-init baseline, the very encoder `mae pretrain
/// --preset P --seed S` starts from.
pub fn load_or_init_encoder(
    weights: Option<&Path>,
    preset: Option<&str>,
    seed: u64,
    device: &Device,
) -> Result<mae::Encoder> {
    match (weights, preset) {
        (Some(weights), _) => {
            let resolved = resolve_weights(weights)?;
            mae::Encoder::from_pretrained(&resolved, device)
                .with_context(|| format!("--weights {}", weights.display()))
        }
        (None, Some(preset)) => {
            let config = mae::MaeConfig::preset(preset).with_context(|| format!("--preset {preset}"))?;
            let model = MaskedAutoencoder::new(&config, seed, device)?;
            let source = format!("--preset {preset}");
            Ok(mae::Encoder::from_tensors(&config.encoder_config(), model.state_dict(), &source, device)?)
        }
        (None, None) => bail!("give --weights or --preset"),
    }
}

/// Where the weights of `--weights PATH` are: [`mae::resolve_weights`] (a run folder gives its
/// newest checkpoint), after a clear error for a path that is neither a file nor a hub id.
pub fn resolve_weights(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        // Not a path: a hub id (OWNER/NAME[@REV]) is resolved by the loader, from the cache first.
        if path.to_str().and_then(mae::RepoId::parse).is_some() {
            return Ok(path.to_path_buf());
        }
        bail!(
            "--weights {}: no such file or directory (nor a hub id like facebook/vit-mae-base)",
            path.display()
        );
    }
    mae::resolve_weights(path).with_context(|| format!("--weights {}", path.display()))
}

pub fn load_model(weights: &Path, device: &Device) -> Result<MaskedAutoencoder> {
    let resolved = resolve_weights(weights)?;
    MaskedAutoencoder::from_pretrained(&resolved, device)
        .with_context(|| format!("--weights {}", weights.display()))
}

/// The dataset of `FLAG SPEC` (`--data`, `--train`, `--test`), synthetic images drawn at the
/// model's `size`; errors name the flag and the spec.
pub fn open_dataset(spec: &str, flag: &str, size: usize) -> Result<Arc<dyn mae_data::Dataset>> {
    let parsed: mae_data::DataSpec = spec.parse().with_context(|| format!("{flag} {spec}"))?;
    let options = mae_data::OpenOptions { synthetic_size: size as u32, ..mae_data::OpenOptions::default() };
    mae_data::open(&parsed, &options).with_context(|| format!("{flag} {spec}"))
}

/// `YYYYMMDD-HHMMSS` (UTC) for run folder names.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option index is mimalloc's purge delay: its default (1000 ms in mimalloc v3, 10 in v2)
    /// is there before, -1 after.
    #[test]
    fn keep_freed_memory_turns_off_mimallocs_purge_delay() {
        // Safe: reads and sets mimalloc options.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            // The user's setting wins: the call must leave it as mimalloc read it.
            keep_freed_memory();
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, before);
            return;
        }
        assert!(
            before == 1000 || before == 10,
            "option {MI_OPTION_PURGE_DELAY} is {before}, not a purge delay"
        );
        keep_freed_memory();
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}
