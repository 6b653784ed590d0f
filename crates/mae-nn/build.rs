//! With the `cuda` feature: compiles src/fused.cu to PTX for `CUDA_COMPUTE_CAP` (default 90,
//! Hopper) with the nvcc that candle-kernels uses (`$NVCC`, else `$CUDA_HOME/bin/nvcc`, else
//! `nvcc` on the PATH; `cargo xtask build --cuda --fetch-nvcc` sets them up). Without the
//! feature it does nothing, so the CPU build needs no CUDA.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/fused.cu");
    for var in ["CARGO_FEATURE_CUDA", "NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP", "NVCC_PREPEND_FLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin").join("nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").ok().filter(|c| !c.trim().is_empty()).unwrap_or("90".into());
    let cap = cap.trim().trim_start_matches("sm_").to_string();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("fused.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=sm_{cap}"), "src/fused.cu", "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} failed on src/fused.cu ({s}); see its messages above", nvcc.display()),
        Err(e) => panic!(
            "cannot run {} ({e}): the cuda feature of mae-nn compiles its kernels with nvcc; set NVCC or \
             CUDA_HOME, or build through `cargo xtask build --cuda --fetch-nvcc`",
            nvcc.display()
        ),
    }
}
