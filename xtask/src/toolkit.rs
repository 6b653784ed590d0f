//! Finding (or fetching) the CUDA compiler that candle-kernels needs, and the
//! environment a CUDA build of the workspace runs with.
//!
//! candle-kernels' build script compiles its `.cu` files with `nvcc` (through
//! the `cudaforge` crate) for the GPU architecture in `CUDA_COMPUTE_CAP`
//! (otherwise it asks `nvidia-smi`, which a machine without a GPU lacks), and
//! cudarc's build script runs `nvcc --version` and adds `$CUDA_HOME/lib` &c.
//! to the linker's search path.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, fail, Result};

/// NVIDIA's compiler as PyPI wheels. These exact versions are known to work
/// together: mismatched ones make ptxas reject the PTX that cicc emits.
pub const NVCC_WHEELS: [&str; 5] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
];

/// Where `--fetch-nvcc` installs the wheels, relative to the workspace root.
pub const TOOLS_DIR: &str = ".tools/cuda";

/// Records which wheels were installed in [`TOOLS_DIR`].
const MARKER: &str = ".xtask-wheels";

/// Default GPU architecture when there is no GPU to ask: Hopper (H100/H200).
pub const DEFAULT_COMPUTE_CAP: &str = "90";

/// Headers candle-kernels includes from the toolkit; each must be reachable.
const REQUIRED_HEADERS: [&str; 5] = ["cuda.h", "cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h", "cuda_fp8.h"];

pub struct Toolkit {
    /// The directory holding `bin/nvcc` (and normally `include/cuda.h`):
    /// what `CUDA_HOME` is set to.
    pub root: PathBuf,
    pub nvcc: PathBuf,
    /// Where it was found, for messages.
    pub origin: String,
    /// Include directories outside `root/include` that hold required headers
    /// (passed to nvcc through `NVCC_PREPEND_FLAGS`).
    pub extra_includes: Vec<PathBuf>,
}

/// Find nvcc; with `fetch`, use (installing first if needed) the PyPI
/// toolkit in `.tools/cuda` instead.
pub fn locate(ws: &Path, fetch: bool) -> Result<Toolkit> {
    if fetch {
        return fetch_toolkit(ws);
    }
    if let Some(nvcc) = std::env::var_os("NVCC").filter(|v| !v.is_empty()) {
        let nvcc = PathBuf::from(nvcc);
        let nvcc = nvcc.canonicalize().unwrap_or(nvcc);
        match nvcc.parent().and_then(Path::parent) {
            Some(root) if util::is_executable(&nvcc) => {
                return from_root(root.to_path_buf(), nvcc.clone(), "$NVCC".into())
            }
            _ => {
                return fail(format!(
                    "NVCC={} is set, but is not an executable nvcc: fix or unset it",
                    nvcc.display()
                ))
            }
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let root = PathBuf::from(dir);
            let nvcc = root.join("bin").join(exe("nvcc"));
            if !util::is_executable(&nvcc) {
                return fail(format!(
                    "{var}={} is set, but {} does not exist: point {var} at a CUDA \
                     toolkit (the directory holding bin/nvcc), unset it, or rerun \
                     with --fetch-nvcc",
                    root.display(),
                    nvcc.display()
                ));
            }
            return from_root(root, nvcc, format!("${var}"));
        }
    }
    if let Some(nvcc) = util::which("nvcc") {
        let nvcc = nvcc.canonicalize().unwrap_or(nvcc);
        if let Some(root) = nvcc.parent().and_then(Path::parent) {
            return from_root(root.to_path_buf(), nvcc.clone(), "PATH".into());
        }
    }
    for dir in ["/usr/local/cuda", "/opt/cuda"] {
        let nvcc = Path::new(dir).join("bin").join(exe("nvcc"));
        if util::is_executable(&nvcc) {
            return from_root(dir.into(), nvcc, dir.into());
        }
    }
    if fetched_is_current(ws) {
        println!("nvcc: no system CUDA toolkit found; using the one fetched earlier into {TOOLS_DIR}");
        return discover(ws);
    }
    fail(format!(
        "nvcc (the CUDA compiler that candle-kernels' build script runs) was not found.\n\
         Looked at $NVCC, $CUDA_HOME/bin/nvcc, $CUDA_PATH/bin/nvcc, `nvcc` on PATH, \
         /usr/local/cuda/bin/nvcc, /opt/cuda/bin/nvcc and {TOOLS_DIR}.\n\
         Either install the CUDA toolkit and set CUDA_HOME (e.g. CUDA_HOME=/usr/local/cuda), \
         or rerun with --fetch-nvcc to install NVIDIA's compiler from PyPI into {TOOLS_DIR} \
         (needs python3 with pip and network access; about 270 MB on disk)."
    ))
}

fn exe(name: &str) -> String {
    if cfg!(windows) {
        format!("{name}.exe")
    } else {
        name.to_string()
    }
}

/// A toolkit at `root`; checks that the headers are where nvcc looks.
fn from_root(root: PathBuf, nvcc: PathBuf, origin: String) -> Result<Toolkit> {
    let tk = Toolkit { root, nvcc, origin, extra_includes: Vec::new() };
    let missing: Vec<&str> =
        REQUIRED_HEADERS.iter().copied().filter(|h| !tk.root.join("include").join(h).is_file()).collect();
    if !missing.is_empty() {
        // Distribution packages sometimes put headers in /usr/include and
        // nvcc in /usr/bin, which is fine; only warn.
        println!(
            "warning: {} has no {} (nvcc may still find them elsewhere; the \
             compile check below tells)",
            tk.root.join("include").display(),
            missing.join(", ")
        );
    }
    Ok(tk)
}

fn fetched_is_current(ws: &Path) -> bool {
    let dir = ws.join(TOOLS_DIR);
    let marker = std::fs::read_to_string(dir.join(MARKER)).unwrap_or_default();
    marker.trim() == NVCC_WHEELS.join("\n") && !find_named(&dir, "nvcc", 5).is_empty()
}

/// Install the pinned wheels into `.tools/cuda` unless they already are, and
/// return the toolkit inside.
fn fetch_toolkit(ws: &Path) -> Result<Toolkit> {
    let dir = ws.join(TOOLS_DIR);
    if fetched_is_current(ws) {
        println!("nvcc: {TOOLS_DIR} already holds {}; skipping the install", NVCC_WHEELS.join(" "));
    } else {
        println!("\n==> fetch nvcc from PyPI into {TOOLS_DIR}");
        let partial = ws.join(format!("{TOOLS_DIR}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        let mut pip = Command::new(if cfg!(windows) { "python" } else { "python3" });
        pip.current_dir(ws).args(["-m", "pip", "install", "--target"]).arg(&partial).args(NVCC_WHEELS);
        if let Err(e) = util::run("fetch nvcc (pip install)", &mut pip) {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| util::Error::Failed(format!("removing old {TOOLS_DIR}: {e}")))?;
        }
        std::fs::rename(&partial, &dir)
            .map_err(|e| util::Error::Failed(format!("moving {} to {TOOLS_DIR}: {e}", partial.display())))?;
        std::fs::write(dir.join(MARKER), NVCC_WHEELS.join("\n") + "\n")
            .map_err(|e| util::Error::Failed(format!("writing {TOOLS_DIR}/{MARKER}: {e}")))?;
    }
    discover(ws)
}

/// Work out the layout of the wheels in `.tools/cuda`: the directory with
/// `bin/nvcc` is the root (`nvidia/cu13` for CUDA 13 wheels, where all five
/// wheels merge their files); any required header that is not under
/// `root/include` gets its directory added to the include path.
fn discover(ws: &Path) -> Result<Toolkit> {
    let dir = ws.join(TOOLS_DIR);
    let nvccs = find_named(&dir, &exe("nvcc"), 5);
    let Some(nvcc) =
        nvccs.into_iter().find(|p| p.parent().is_some_and(|b| b.ends_with("bin")) && util::is_executable(p))
    else {
        return fail(format!(
            "no bin/nvcc under {TOOLS_DIR} after installing {}: the wheels' layout changed?",
            NVCC_WHEELS.join(" ")
        ));
    };
    let root = nvcc.parent().and_then(Path::parent).expect("bin/nvcc has a grandparent").to_path_buf();
    let mut extra_includes: Vec<PathBuf> = Vec::new();
    for header in REQUIRED_HEADERS {
        if root.join("include").join(header).is_file() {
            continue;
        }
        match find_named(&dir, header, 7).into_iter().next() {
            Some(found) => {
                let inc = found.parent().expect("a file has a parent").to_path_buf();
                if !extra_includes.contains(&inc) {
                    extra_includes.push(inc);
                }
            }
            None => {
                return fail(format!(
                    "{header} is missing from {TOOLS_DIR}: the wheels {} should provide it",
                    NVCC_WHEELS.join(" ")
                ))
            }
        }
    }
    #[cfg(unix)]
    link_unversioned_libs(&root.join("lib"));
    Ok(Toolkit { origin: format!("{TOOLS_DIR} (PyPI wheels)"), root, nvcc, extra_includes })
}

/// The wheels ship `libcudart.so.13` but no `libcudart.so`, which `-lcudart`
/// (candle-kernels links it) needs when a binary is linked: add the links.
#[cfg(unix)]
fn link_unversioned_libs(lib: &Path) {
    let Ok(entries) = std::fs::read_dir(lib) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((base, ver)) = name.split_once(".so.") else {
            continue;
        };
        if ver.is_empty() || !ver.chars().all(|c| c.is_ascii_digit() || c == '.') {
            continue;
        }
        let link = lib.join(format!("{base}.so"));
        if link.symlink_metadata().is_err() {
            let _ = std::os::unix::fs::symlink(&name, &link);
        }
    }
}

/// Files called `name` under `dir`, at most `depth` levels down, sorted.
fn find_named(dir: &Path, name: &str, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            if depth > 0 {
                out.extend(find_named(&path, name, depth - 1));
            }
        } else if entry.file_name() == name {
            out.push(path);
        }
    }
    out
}

/// The compute capability to build for, and where it came from:
/// `--compute-cap` beats `$CUDA_COMPUTE_CAP`, which beats `default`.
pub fn compute_cap(flag: Option<&str>, default: &str) -> Result<(String, String)> {
    let (value, from) = match (flag, std::env::var("CUDA_COMPUTE_CAP")) {
        (Some(v), _) => (v.to_string(), "--compute-cap".to_string()),
        (None, Ok(v)) if !v.trim().is_empty() => (v.trim().to_string(), "$CUDA_COMPUTE_CAP".into()),
        (None, _) => (default.to_string(), "default".into()),
    };
    let bare = value.strip_prefix("sm_").unwrap_or(&value);
    let digits = bare.trim_end_matches(['a', 'f']);
    let ok =
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) && bare.len() - digits.len() <= 1;
    if !ok {
        return fail(format!(
            "invalid compute capability `{value}` (from {from}): expected a number such as \
             80 (Ampere), 89 (Ada), 90 (Hopper), optionally with an `a` suffix (90a)"
        ));
    }
    Ok((bare.to_string(), from))
}

/// The `sm_` target nvcc gets for `cap`, as candle-kernels' build (cudaforge)
/// picks it: 90 and above get the arch-specific `a` suffix, 120 and above `f`.
pub fn nvcc_arch(cap: &str) -> String {
    let digits = cap.trim_end_matches(['a', 'f']);
    if digits.len() != cap.len() {
        return cap.to_string();
    }
    match digits.parse::<u32>() {
        Ok(n) if n >= 120 => format!("{n}f"),
        Ok(n) if n >= 90 => format!("{n}a"),
        _ => cap.to_string(),
    }
}

/// The environment a CUDA build runs with, in order.
pub fn env(tk: &Toolkit, cap: &str) -> Vec<(&'static str, OsString)> {
    let root: OsString = tk.root.clone().into();
    let mut path = OsString::from(tk.root.join("bin"));
    if let Some(old) = std::env::var_os("PATH") {
        path.push(if cfg!(windows) { ";" } else { ":" });
        path.push(old);
    }
    let mut env = vec![
        // cudaforge (candle-kernels' build) takes $NVCC first, then PATH,
        // then $CUDA_HOME; cudarc runs `nvcc --version` from PATH and adds
        // $CUDA_HOME (CUDA_PATH, CUDA_ROOT) /lib &c. to the link search path.
        ("NVCC", tk.nvcc.clone().into()),
        ("CUDA_HOME", root.clone()),
        ("CUDA_PATH", root.clone()),
        ("CUDA_ROOT", root),
        ("PATH", path),
        ("CUDA_COMPUTE_CAP", cap.into()),
    ];
    if !tk.extra_includes.is_empty() {
        let mut flags = std::env::var("NVCC_PREPEND_FLAGS").unwrap_or_default();
        for inc in &tk.extra_includes {
            if !flags.is_empty() {
                flags.push(' ');
            }
            flags.push_str(&format!("-I{}", inc.display()));
        }
        env.push(("NVCC_PREPEND_FLAGS", flags.into()));
    }
    env
}

/// `LD_LIBRARY_PATH` with the toolkit's library directories first, for
/// running binaries linked against the CUDA libraries (None if it has none).
pub fn runtime_library_path(tk: &Toolkit) -> Option<(&'static str, OsString)> {
    let var = if cfg!(target_os = "macos") { "DYLD_LIBRARY_PATH" } else { "LD_LIBRARY_PATH" };
    let mut dirs: Vec<PathBuf> = ["lib64", "lib", "targets/x86_64-linux/lib"]
        .iter()
        .map(|d| tk.root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    if dirs.is_empty() {
        return None;
    }
    if let Some(old) = std::env::var_os(var) {
        dirs.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(dirs).ok().map(|p| (var, p))
}

pub fn apply_env(cmd: &mut Command, env: &[(&'static str, OsString)]) {
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// Print the toolkit and the environment that will be used.
pub fn print_env(ws: &Path, tk: &Toolkit, cap: &str, cap_from: &str, env: &[(&str, OsString)]) {
    println!(
        "nvcc: {} (from {}), building for compute capability {cap} ({cap_from}; nvcc target sm_{})",
        util::rel(ws, &tk.nvcc),
        tk.origin,
        nvcc_arch(cap)
    );
    println!("CUDA build environment:");
    let current_path = std::env::var("PATH").unwrap_or_default();
    for (k, v) in env {
        let v = v.to_string_lossy();
        if *k == "PATH" {
            let prefix = v.strip_suffix(current_path.as_str()).unwrap_or(&v);
            println!("    PATH={prefix}$PATH");
        } else {
            println!("    {k}={v}");
        }
    }
}

/// Compile a tiny kernel that includes what candle-kernels includes, to PTX
/// and to an object file (host compiler + ptxas), so a broken toolkit fails
/// here in a second instead of deep inside a cargo build.
pub fn probe(tk: &Toolkit, cap: &str, env: &[(&'static str, OsString)]) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("xtask-nvcc-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| util::Error::Failed(format!("creating {}: {e}", dir.display())))?;
    let src = dir.join("probe.cu");
    std::fs::write(&src, PROBE_CU)
        .map_err(|e| util::Error::Failed(format!("writing {}: {e}", src.display())))?;
    let arch = nvcc_arch(cap);
    let gencode = format!("-gencode=arch=compute_{arch},code=sm_{arch}");
    let mut result = Ok(());
    for (what, args) in [
        ("PTX", vec!["--ptx", "-o", "probe.ptx"]),
        ("object", vec!["-c", "-Xcompiler", "-fPIC", "-o", "probe.o"]),
    ] {
        let mut cmd = Command::new(&tk.nvcc);
        apply_env(&mut cmd, env);
        cmd.current_dir(&dir)
            .arg(&gencode)
            .args(["-std=c++17", "--expt-relaxed-constexpr"])
            .args(args)
            .arg("probe.cu");
        match cmd.output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                result = fail(format!(
                    "nvcc could not compile a test kernel to {what} for sm_{arch} ({}):\n{}{}\n\
                     The toolkit at {} is incomplete or does not support this GPU architecture.",
                    util::describe(out.status),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    tk.root.display()
                ));
                break;
            }
            Err(e) => {
                result = fail(format!("could not run {}: {e}", tk.nvcc.display()));
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if result.is_ok() {
        println!(
            "nvcc check: compiled a test kernel (fp16/bf16/fp8 headers, libcu++, thrust) to PTX and object code for sm_{arch}: ok"
        );
    }
    result
}

const PROBE_CU: &str = r#"// Written by `cargo xtask` to check the CUDA toolkit.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda/std/limits>
#include <thrust/device_ptr.h>
#include <stdint.h>

extern "C" __global__ void xtask_probe(const __nv_bfloat16 *a, const __half *b,
                                       float *out, size_t n) {
  size_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    out[i] = __bfloat162float(a[i]) + __half2float(b[i]) +
             cuda::std::numeric_limits<float>::epsilon();
  }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_suffixes_follow_cudaforge() {
        assert_eq!(nvcc_arch("80"), "80");
        assert_eq!(nvcc_arch("89"), "89");
        assert_eq!(nvcc_arch("90"), "90a");
        assert_eq!(nvcc_arch("90a"), "90a");
        assert_eq!(nvcc_arch("100"), "100a");
        assert_eq!(nvcc_arch("120"), "120f");
    }

    #[test]
    fn compute_cap_flag_wins_and_is_validated() {
        assert_eq!(compute_cap(Some("86"), "90").unwrap().0, "86");
        assert_eq!(compute_cap(Some("sm_90a"), "90").unwrap().0, "90a");
        assert!(compute_cap(Some("9.0"), "90").is_err());
        assert!(compute_cap(Some("hopper"), "90").is_err());
        assert!(compute_cap(Some("90aa"), "90").is_err());
    }
}
