//! `cargo xtask build --cuda | --metal`: build the workspace on a GPU backend.

use std::process::Command;

use crate::args::{Args, Parsed};
use crate::toolkit;
use crate::util::{self, fail, Result};

pub const HELP: &str = "\
cargo xtask build: build the workspace with one of candle's GPU backends

USAGE:
    cargo xtask build --cuda [--nccl] [--cudnn] [--fetch-nvcc] [--compute-cap N]
                             [--bins] [--release] [--toolkit-only] [-- <extra cargo args>]
    cargo xtask build --metal [--release] [-- <extra cargo args>]

CUDA (--cuda) runs, in the workspace root:
    cargo build --workspace --exclude xtask --lib --features mae-cli/cuda[,mae-cli/nccl][,mae-cli/cudnn]

    candle-kernels compiles its kernels with nvcc; no GPU is needed to build.
    nvcc is looked for in $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, on PATH, in
    /usr/local/cuda and /opt/cuda, then in .tools/cuda (a previous
    --fetch-nvcc). The build gets CUDA_HOME, CUDA_PATH and CUDA_ROOT set to
    that toolkit, NVCC to its nvcc, its bin/ first on PATH, and
    CUDA_COMPUTE_CAP. A test kernel is compiled first, so a broken toolkit
    fails in seconds.

    Only the library crates are built by default (--lib): linking a binary or
    test with CUDA needs libcuda.so (from the NVIDIA driver) and libcublas,
    libcublasLt, libcurand, libnvrtc, libcudart (from the CUDA toolkit), which
    a machine without a GPU usually lacks. Pass --bins to build the binaries
    too (there, a missing `-lcuda` &c. gets an explanation).

OPTIONS:
    --cuda              Build with candle's CUDA backend (feature mae-cli/cuda)
    --nccl              Also enable mae-cli/nccl (multi-GPU; linking needs libnccl)
    --cudnn             Also enable mae-cli/cudnn (linking needs libcudnn)
    --fetch-nvcc        Use NVIDIA's compiler from PyPI, installed into
                        .tools/cuda with `python3 -m pip install --target` (once;
                        skipped when already there):
                        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88
                        nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
                        nvidia-cuda-cccl==13.0.85
    --compute-cap N     GPU architecture to compile kernels for, e.g. 80
                        (A100), 89 (L40/RTX 40xx), 90 (H100/H200). Default:
                        $CUDA_COMPUTE_CAP if set, else 90
    --bins              Build binaries too, not only the libraries
    --toolkit-only      Stop after finding (or fetching) and checking nvcc and
                        printing the build environment; build nothing
    --metal             Build with candle's Metal backend (feature mae-cli/metal;
                        macOS only)
    --release           Build in release mode
    -h, --help          Print this help

EXAMPLES:
    cargo xtask build --cuda
    cargo xtask build --cuda --fetch-nvcc --release
    cargo xtask build --cuda --fetch-nvcc --toolkit-only
    cargo xtask build --cuda --compute-cap 80 --cudnn
    cargo xtask build --cuda --bins -- --timings
    cargo xtask build --metal --release
";

#[derive(Default)]
struct Opts {
    cuda: bool,
    metal: bool,
    nccl: bool,
    cudnn: bool,
    fetch_nvcc: bool,
    compute_cap: Option<String>,
    bins: bool,
    toolkit_only: bool,
    release: bool,
    extra: Vec<String>,
}

pub fn main(argv: Vec<String>) -> Result<()> {
    let mut args = Args::new("build", argv);
    let mut o = Opts::default();
    let parsed = args.parse_flags(HELP, |args, f| {
        match f {
            "--cuda" => o.cuda = true,
            "--metal" => o.metal = true,
            "--nccl" => o.nccl = true,
            "--cudnn" => o.cudnn = true,
            "--fetch-nvcc" => o.fetch_nvcc = true,
            "--compute-cap" => o.compute_cap = Some(args.value(f)?),
            "--bins" => o.bins = true,
            "--toolkit-only" => o.toolkit_only = true,
            "--release" => o.release = true,
            _ => return Err(args.unknown(f)),
        }
        Ok(())
    })?;
    let Parsed::Done { rest } = parsed else { return Ok(()) };
    o.extra = rest.unwrap_or_default();
    match (o.cuda, o.metal) {
        (true, true) => Err(args.usage("--cuda and --metal exclude each other".into())),
        (false, false) => Err(args
            .usage("choose a backend: --cuda or --metal (for the CPU build run plain `cargo build`)".into())),
        (false, true) => {
            let cuda_only = [
                ("--nccl", o.nccl),
                ("--cudnn", o.cudnn),
                ("--fetch-nvcc", o.fetch_nvcc),
                ("--compute-cap", o.compute_cap.is_some()),
                ("--bins", o.bins),
                ("--toolkit-only", o.toolkit_only),
            ];
            if let Some((flag, _)) = cuda_only.iter().find(|(_, set)| *set) {
                return Err(args.usage(format!("{flag} only applies to --cuda")));
            }
            metal(&o)
        }
        (true, false) => cuda(&o),
    }
}

fn metal(o: &Opts) -> Result<()> {
    if !cfg!(target_os = "macos") {
        return fail(format!(
            "the Metal backend needs macOS; on {} use --cuda or the CPU build (`cargo build`)",
            if cfg!(target_os = "linux") { "Linux".to_string() } else { std::env::consts::OS.to_string() }
        ));
    }
    let root = util::workspace_root();
    let mut cmd = util::cargo_cmd(&root);
    cmd.args(["build", "--workspace", "--exclude", "xtask", "--features", "mae-cli/metal"]);
    if o.release {
        cmd.arg("--release");
    }
    cmd.args(&o.extra);
    util::run("build --metal", &mut cmd)
}

fn cuda(o: &Opts) -> Result<()> {
    let root = util::workspace_root();
    let tk = toolkit::locate(&root, o.fetch_nvcc)?;
    let (cap, cap_from) = toolkit::compute_cap(o.compute_cap.as_deref(), toolkit::DEFAULT_COMPUTE_CAP)?;
    let env = toolkit::env(&tk, &cap);
    toolkit::print_env(&root, &tk, &cap, &cap_from, &env);
    toolkit::probe(&tk, &cap, &env)?;
    if o.toolkit_only {
        println!("--toolkit-only: not building");
        return Ok(());
    }

    let mut features = vec!["mae-cli/cuda"];
    if o.nccl {
        features.push("mae-cli/nccl");
    }
    if o.cudnn {
        features.push("mae-cli/cudnn");
    }
    let mut cmd = util::cargo_cmd(&root);
    toolkit::apply_env(&mut cmd, &env);
    cmd.args(["build", "--workspace", "--exclude", "xtask"]);
    if !o.bins {
        cmd.arg("--lib");
    }
    cmd.args(["--features", &features.join(",")]);
    if o.release {
        cmd.arg("--release");
    }
    cmd.args(&o.extra);
    println!("\n==> build (CUDA{})", if o.bins { ", with binaries" } else { ", libraries only" });
    run_cuda_cargo("build --cuda", &mut cmd)
}

/// Run a cargo command that links CUDA binaries; when it fails because a
/// CUDA library is missing at link time, explain why.
pub fn run_cuda_cargo(step: &str, cmd: &mut Command) -> Result<()> {
    let (res, missing) = util::run_scanning(step, cmd, missing_cuda_lib);
    if res.is_err() && !missing.is_empty() {
        eprintln!("\n{}", link_hint(&missing));
    }
    res
}

/// CUDA libraries cudarc / candle-kernels link against.
const CUDA_LIBS: [&str; 8] = ["cuda", "cublas", "cublasLt", "curand", "nvrtc", "cudart", "nccl", "cudnn"];

/// `Some("cuda")` for a linker line such as `ld: cannot find -lcuda`.
fn missing_cuda_lib(line: &str) -> Option<String> {
    for marker in ["cannot find -l", "unable to find library -l", "library not found for -l"] {
        if let Some(idx) = line.find(marker) {
            let rest = &line[idx + marker.len()..];
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '+').collect();
            if CUDA_LIBS.contains(&name.as_str()) {
                return Some(name);
            }
        }
    }
    None
}

fn link_hint(missing: &[String]) -> String {
    let list = missing.iter().map(|l| format!("-l{l}")).collect::<Vec<_>>().join(", ");
    let mut hint = format!(
        "hint: linking failed because the linker cannot find {list}.\n\
         The library crates compiled; linking a binary or test against candle's CUDA\n\
         backend also needs the CUDA libraries themselves:\n"
    );
    if missing.iter().any(|l| l == "cuda") {
        hint.push_str(
            "  - libcuda.so comes with the NVIDIA driver, not the compiler: a machine\n    \
             without an NVIDIA GPU/driver does not have it (a full CUDA toolkit has a\n    \
             link-only stub in lib64/stubs/libcuda.so).\n",
        );
    }
    if missing.iter().any(|l| l != "cuda") {
        hint.push_str(
            "  - libcublas, libcublasLt, libcurand, libnvrtc, libcudart (and libnccl,\n    \
             libcudnn with --nccl/--cudnn) come with the CUDA toolkit; the PyPI\n    \
             compiler from --fetch-nvcc has only libcudart. Install the toolkit and set\n    \
             CUDA_HOME, or put the libraries' directory in LIBRARY_PATH.\n",
        );
    }
    hint.push_str(
        "On a machine without a GPU build only the libraries: `cargo xtask build --cuda`\n\
         (without --bins). Binaries and tests are built on the GPU machine\n\
         (`cargo xtask gpu-check`).",
    );
    hint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spots_missing_libs() {
        assert_eq!(
            missing_cuda_lib("  = note: /usr/bin/ld: cannot find -lcuda: No such file or directory"),
            Some("cuda".into())
        );
        assert_eq!(
            missing_cuda_lib("          /usr/bin/ld: cannot find -lcublasLt"),
            Some("cublasLt".into())
        );
        assert_eq!(missing_cuda_lib("ld: cannot find -lfoo"), None);
        assert_eq!(missing_cuda_lib("   Compiling mae v0.1.0"), None);
    }

    #[test]
    fn hint_mentions_driver_for_libcuda() {
        let h = link_hint(&["cuda".to_string()]);
        assert!(h.contains("NVIDIA driver"));
        assert!(h.contains("without --bins"));
    }
}
