//! `cargo xtask gpu-bundle`: build the CUDA binaries here (no GPU, no CUDA install needed) for a
//! GPU machine that has the NVIDIA driver and CUDA libraries but no Rust toolchain, and run them
//! there with `bash xtask/gpu/run-bundle.sh`.
//!
//! candle links cudarc against libcuda, libcublas, ... at link time. A machine without them gets
//! empty stand-ins with the right sonames (`.tools/cuda-stubs`) and a link that leaves the CUDA
//! symbols to the dynamic loader, which finds the real libraries on the GPU machine.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::args::{Args, Parsed};
use crate::toolkit;
use crate::util::{self, fail, Result};

pub const HELP: &str = "\
cargo xtask gpu-bundle: CUDA binaries for a GPU machine without Rust

USAGE:
    cargo xtask gpu-bundle [--fetch-nvcc] [--compute-cap N] [--out DIR] [--pack]

Builds, in release with the features mae-cli/cuda and mae-cli/nccl (target dir target/cuda):
    the `mae` binary, the test binaries parity_hf, parity_lightly, mixed_precision,
    gradients and nccl of the mae crate, and mae-nn's unit tests (its CUDA kernels' tests),
and copies them to DIR (default .gpu-bundle/: `mae`, `tests/<name>`). Copy the repository with
that folder to the GPU machine and run there, from the repository root:

    bash xtask/gpu/run-bundle.sh          # tests on the GPU, bench vs PyTorch, NCCL, bf16 training

Libraries: the link uses stand-ins with the sonames of CUDA 13 (libcuda.so.1, libcublas.so.13,
libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libnccl.so.2) made with the C compiler in
.tools/cuda-stubs; the GPU machine must have the real ones (driver 580+, CUDA 13 libraries, e.g.
PyTorch's nvidia-* wheels, which run-bundle.sh finds). Kernels are PTX for CUDA_COMPUTE_CAP
(default 90, Hopper), from the toolkit `cargo xtask build --cuda` finds (--fetch-nvcc: PyPI's).

OPTIONS:
    --fetch-nvcc        Use (and install if needed) the PyPI nvcc in .tools/cuda
    --compute-cap N     Kernels for compute capability N (default 90)
    --out DIR           Where the bundle goes (default .gpu-bundle)
    --pack              Also write DIR.tar.xz (about 17 MB instead of 300: the binaries embed
                        the same PTX kernels); run-bundle.sh unpacks it when DIR is absent
    -h, --help          Print this help
";

/// The modules of the mae crate's test binary `it` that the GPU check runs (MAE_TEST_DEVICE=cuda);
/// the others start the `mae` binary at its build path, which does not travel.
pub const GPU_TESTS: [&str; 5] = ["parity_hf", "parity_lightly", "mixed_precision", "gradients", "nccl"];

/// The mae crate's one integration-test binary (crates/mae/tests/it).
const TEST_BINARY: &str = "it";

/// Where the bundle holds mae-nn's unit tests (the CUDA kernels' tests among them).
const KERNEL_TESTS: &str = "mae-nn";

/// `(library, soname)` of the stand-ins: what cudarc's dynamic linking asks for, CUDA 13.
const STUBS: [(&str, &str); 7] = [
    ("cuda", "libcuda.so.1"),
    ("cublas", "libcublas.so.13"),
    ("cublasLt", "libcublasLt.so.13"),
    ("curand", "libcurand.so.10"),
    ("nvrtc", "libnvrtc.so.13"),
    ("nccl", "libnccl.so.2"),
    ("cudart", "libcudart.so.13"),
];

struct Opts {
    fetch: bool,
    pack: bool,
    cap_flag: Option<String>,
    out: Option<PathBuf>,
}

fn parse(argv: Vec<String>) -> Result<Option<Opts>> {
    let mut args = Args::new("gpu-bundle", argv);
    let mut o = Opts { fetch: false, pack: false, cap_flag: None, out: None };
    let parsed = args.parse_flags(HELP, |args, f| {
        match f {
            "--fetch-nvcc" => o.fetch = true,
            "--pack" => o.pack = true,
            "--compute-cap" => o.cap_flag = Some(args.value(f)?),
            "--out" => o.out = Some(PathBuf::from(args.value(f)?)),
            _ => return Err(args.unknown(f)),
        }
        Ok(())
    })?;
    match parsed {
        Parsed::Help => Ok(None),
        Parsed::Done { rest: Some(_) } => Err(args.usage("gpu-bundle takes no extra cargo arguments".into())),
        Parsed::Done { rest: None } => Ok(Some(o)),
    }
}

pub fn main(argv: Vec<String>) -> Result<()> {
    let Some(o) = parse(argv)? else { return Ok(()) };
    let root = util::workspace_root();
    let out = o.out.clone().unwrap_or_else(|| root.join(".gpu-bundle"));
    let env = build_env(&root, &o)?;

    println!("\n==> build the mae binary (release, cuda + nccl)");
    let mut cmd = util::cargo_cmd(&root);
    toolkit::apply_env(&mut cmd, &env);
    cmd.args(["build", "--release", "-p", "mae-cli", "--features", "cuda,nccl", "--bins"]);
    util::run("build", &mut cmd)?;

    println!("\n==> build the GPU tests");
    let test_exe = build_tests(&root, &env)?;
    let kernel_tests = build_kernel_tests(&root, &env)?;
    assemble(&root, &out, &test_exe)?;
    copy(&kernel_tests, &out.join("tests").join(KERNEL_TESTS))?;
    if o.pack {
        pack(&root, &out)?;
    }
    println!(
        "\ngpu-bundle: {} is ready; on the GPU machine: bash xtask/gpu/run-bundle.sh",
        util::rel(&root, &out)
    );
    Ok(())
}

/// The CUDA build environment, linking against the stand-ins, into target/cuda.
fn build_env(root: &Path, o: &Opts) -> Result<Vec<(&'static str, OsString)>> {
    let tk = toolkit::locate(root, o.fetch)?;
    let (cap, from) = toolkit::compute_cap(o.cap_flag.as_deref(), toolkit::DEFAULT_COMPUTE_CAP)?;
    let mut env = toolkit::env(&tk, &cap);
    toolkit::print_env(root, &tk, &cap, &from, &env);
    let stubs = root.join(".tools/cuda-stubs");
    make_stubs(&stubs)?;
    let rustflags = format!(
        "-L native={} -C link-arg=-Wl,--unresolved-symbols=ignore-all -C link-arg=-Wl,-z,lazy",
        stubs.display()
    );
    env.push(("RUSTFLAGS", rustflags.into()));
    env.push(("CARGO_TARGET_DIR", root.join("target/cuda").into()));
    Ok(env)
}

/// Build the mae crate's test binary (without running it); returns its path.
fn build_tests(root: &Path, env: &[(&'static str, OsString)]) -> Result<PathBuf> {
    test_binary(root, env, &["-p", "mae", "--features", "cuda,nccl", "--test", TEST_BINARY], TEST_BINARY)
}

/// The unit tests of mae-nn with its CUDA kernels (`fused::tests::cuda_tests`), which
/// run-bundle.sh runs before switching the kernels on in the benchmark.
fn build_kernel_tests(root: &Path, env: &[(&'static str, OsString)]) -> Result<PathBuf> {
    test_binary(root, env, &["-p", "mae-nn", "--features", "cuda", "--lib"], "mae_nn")
}

/// Builds (without running) the test target `name` that `selection` picks; returns its path.
fn test_binary(
    root: &Path,
    env: &[(&'static str, OsString)],
    selection: &[&str],
    name: &str,
) -> Result<PathBuf> {
    let mut cmd = util::cargo_cmd(root);
    toolkit::apply_env(&mut cmd, env);
    cmd.args(["test", "--release", "--no-run", "--message-format=json"]).args(selection);
    let output = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .or_else(|e| fail(format!("cannot run cargo: {e}")))?;
    if !output.status.success() {
        return fail(format!("building the GPU tests failed ({})", util::describe(output.status)));
    }
    let tests = test_executables(&String::from_utf8_lossy(&output.stdout));
    match tests.into_iter().find(|(target, _)| target == name) {
        Some((_, exe)) => Ok(PathBuf::from(exe)),
        None => fail(format!("cargo did not report the test binary `{name}`")),
    }
}

/// Copy the binaries into `out` (`mae`, `tests/<it>`, `tests/modules.txt`).
fn assemble(root: &Path, out: &Path, test_exe: &Path) -> Result<()> {
    std::fs::create_dir_all(out.join("tests")).or_else(|e| fail(format!("{}: {e}", out.display())))?;
    copy(&root.join("target/cuda/release/mae"), &out.join("mae"))?;
    copy(test_exe, &out.join("tests").join(TEST_BINARY))?;
    // run-bundle.sh runs the binary once per module listed here (a filter `module::` each).
    let modules: String = GPU_TESTS.iter().map(|m| format!("{m}\n")).collect();
    std::fs::write(out.join("tests/modules.txt"), modules)
        .or_else(|e| fail(format!("{}: {e}", out.display())))
}

/// `tar -cJf out.tar.xz out`.
fn pack(root: &Path, out: &Path) -> Result<()> {
    let archive = out.with_extension("tar.xz");
    println!("\n==> pack {}", util::rel(root, &archive));
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else {
        return fail(format!("--out {}: not a folder path", out.display()));
    };
    let mut cmd = Command::new("tar");
    cmd.env("XZ_OPT", "-9 -T0").current_dir(parent).arg("-cJf").arg(&archive).arg(name);
    util::run("pack", &mut cmd)
}

/// Empty shared libraries with the sonames the link records (compiled with `cc`).
fn make_stubs(dir: &Path) -> Result<()> {
    let io = |e: std::io::Error| util::Error::Failed(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let empty = dir.join("empty.c");
    std::fs::write(&empty, "/* a link-time stand-in: the real library is loaded at run time */\n")
        .map_err(io)?;
    for (name, soname) in STUBS {
        let lib = dir.join(format!("lib{name}.so"));
        if lib.exists() {
            continue;
        }
        let mut cmd = Command::new("cc");
        cmd.args(["-shared", "-o"]).arg(&lib).arg(format!("-Wl,-soname,{soname}")).arg(&empty);
        util::run(&format!("stub {soname}"), &mut cmd)?;
    }
    Ok(())
}

/// `(test target name, executable)` from cargo's `--message-format=json` output (xtask has no
/// JSON parser: cargo writes the target, with its name first, before the profile).
fn test_executables(json_lines: &str) -> Vec<(String, String)> {
    let string_after = |line: &str, key: &str| -> Option<String> {
        let start = line.find(key)? + key.len();
        let end = line[start..].find('"')?;
        Some(line[start..start + end].to_string())
    };
    json_lines
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#) && l.contains(r#""test":true"#))
        .filter_map(|l| Some((string_after(l, r#""name":""#)?, string_after(l, r#""executable":""#)?)))
        .collect()
}

/// Copies an executable, strips its symbols where `strip` exists (the bundle travels, and each
/// test binary carries the whole crate graph), and records the CUDA libraries it needs.
///
/// The linker drops the stand-ins from the binary's needed libraries (`--as-needed`: they
/// define nothing), so the CUDA symbols would have no library to come from at run time;
/// `patchelf --add-needed` names the real ones' sonames.
fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map_err(|e| util::Error::Failed(format!("copy {} -> {}: {e}", from.display(), to.display())))?;
    if util::which("strip").is_some() {
        let _ = Command::new("strip").arg(to).status();
    }
    if util::which("patchelf").is_none() {
        return fail("gpu-bundle needs patchelf (Debian/Ubuntu: apt-get install patchelf)");
    }
    let undefined = Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(to)
        .output()
        .or_else(|e| fail(format!("nm {}: {e}", to.display())))?;
    let undefined = String::from_utf8_lossy(&undefined.stdout).into_owned();
    let mut cmd = Command::new("patchelf");
    for (name, soname) in STUBS {
        if uses_library(&undefined, name) {
            cmd.args(["--add-needed", soname]);
        }
    }
    util::run(&format!("patchelf {}", to.display()), cmd.arg(to))
}

/// Whether `nm -D --undefined-only` output names a symbol of CUDA library `lib` (by the
/// libraries' symbol prefixes: `cuInit` is the driver's, `cublasLt...` cuBLASLt's, ...).
fn uses_library(nm_undefined: &str, lib: &str) -> bool {
    nm_undefined.lines().filter_map(|l| l.split_whitespace().last()).any(|sym| match lib {
        "cuda" => sym.starts_with("cu") && sym[2..].starts_with(|c: char| c.is_ascii_uppercase()),
        "cublas" => sym.starts_with("cublas") && !sym.starts_with("cublasLt"),
        "cudart" => sym.starts_with("cuda") && sym[4..].starts_with(|c: char| c.is_ascii_uppercase()),
        other => sym.starts_with(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_are_told_apart_by_symbol_prefix() {
        let nm = "                 U cuCtxGetCurrent\n                 U cublasLtMatmul\n                 U ncclAllReduce\n";
        assert!(uses_library(nm, "cuda") && uses_library(nm, "cublasLt") && uses_library(nm, "nccl"));
        assert!(!uses_library(nm, "cublas") && !uses_library(nm, "nvrtc") && !uses_library(nm, "cudart"));
        assert!(!uses_library("                 U curandCreateGenerator\n", "cuda"));
    }

    #[test]
    fn test_executables_are_read_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/mae#0.1.0","target":{"kind":["test"],"name":"nccl","src_path":"/w/nccl.rs"},"profile":{"opt_level":"3","test":true},"executable":"/t/nccl-1","fresh":true}
{"reason":"compiler-artifact","target":{"name":"mae"},"profile":{"test":false},"executable":"/t/mae"}
not json
{"reason":"build-finished","success":true}"#;
        assert_eq!(test_executables(json), vec![("nccl".to_string(), "/t/nccl-1".to_string())]);
    }
}
