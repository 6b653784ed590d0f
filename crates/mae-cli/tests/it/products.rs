//! Which kernel runs the products is visible and forcible: `MAE_PRODUCT` picks it, `mae bench
//! --json` names it, a run folder records it, `mae info` shows it, and a resume on another
//! kernel warns that the run is no longer bit-identical.

use crate::run_mae::{command, mae, stderr};

fn bench_kernel(product: Option<&str>, dtype: &str) -> String {
    let mut cmd = command("");
    if let Some(p) = product {
        cmd.env("MAE_PRODUCT", p);
    }
    let args =
        ["bench", "--preset", "mae-vit-micro-patch4-32", "--batch-size", "4", "--steps", "1", "--json"];
    let o = cmd.args(args).args(["--dtype", dtype]).output().expect("mae runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    json["product_kernel"].as_str().expect("product_kernel").to_string()
}

#[test]
fn mae_product_forces_the_kernel_and_bench_names_it() {
    assert_eq!(bench_kernel(None, "f32"), "f32");
    assert_eq!(bench_kernel(Some("f32"), "bf16"), "f32", "MAE_PRODUCT=f32 makes bf16 products run in f32");
    let here = bench_kernel(None, "bf16");
    let has_bf16 = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("avx512_bf16"));
    if has_bf16 {
        assert_eq!(here, "avx512bf16", "the CPU lists avx512_bf16, yet bf16 products run on {here}");
        assert_eq!(bench_kernel(Some("avx512bf16"), "bf16"), "avx512bf16");
    } else {
        assert_eq!(here, "f32", "no AVX512-BF16 here: bf16 products fall back to f32");
    }
}

#[test]
fn a_run_records_its_product_kernel_and_a_resume_on_another_warns() {
    let dir = tempfile::tempdir().unwrap();
    let run = [
        "pretrain",
        "--data",
        "synthetic:32",
        "--batch-size",
        "8",
        "--steps",
        "4",
        "--checkpoint-every",
        "2",
        "--dtype",
        "bf16",
        "--progress",
        "silent",
        "--out",
        "run",
    ];
    // Stopped inside the checkpoint of step 4: the one of step 2 is there to resume from.
    let o = command("abort-in-checkpoint:4")
        .env("MAE_PRODUCT", "f32")
        .args(run)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success(), "the fault aborts the run");
    let recorded = std::fs::read_to_string(dir.path().join("run/products.json")).unwrap();
    assert!(recorded.contains("\"product_kernel\":\"f32\""), "{recorded}");

    let o = mae(&["info", "--weights", "run"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(info.contains("products: trained on the f32 kernel"), "{info}");
    assert!(info.contains("products here:"), "{info}");

    // Resumed on the bf16 kernel: a warning exactly where that differs from f32.
    let o = command("")
        .env("MAE_PRODUCT", "avx512bf16")
        .args(["pretrain", "--resume", "run", "--progress", "silent"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let differs = !bench_kernel(Some("avx512bf16"), "bf16").eq("f32");
    assert_eq!(stderr(&o).contains("no longer bit-identical"), differs, "{}", stderr(&o));
}

/// `mae embed --dtype bf16`: the encoder's products in bf16 give features within bf16's
/// tolerance of the f32 ones (and not the same bits, where the bf16 kernel runs).
#[test]
fn embed_in_bf16_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let weights = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/hf_tiny_a");
    let features = |dtype: &str| -> Vec<f32> {
        let out = format!("{dtype}.safetensors");
        let args =
            ["embed", "--weights", weights, "--data", "synthetic:8@test", "--out", &out, "--dtype", dtype];
        let o = mae(&args, dir.path());
        assert!(o.status.success(), "{}", stderr(&o));
        let bytes = std::fs::read(dir.path().join(&out)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("features").unwrap();
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let (f32s, bf16s) = (features("f32"), features("bf16"));
    assert_eq!(f32s.len(), bf16s.len());
    let norm = f32s.iter().map(|v| v * v).sum::<f32>().sqrt();
    let diff = f32s.iter().zip(&bf16s).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
    assert!(diff < 2e-2 * norm, "bf16 features off by {diff} of {norm}");
    if bench_kernel(None, "bf16") == "avx512bf16" {
        assert!(diff > 0.0, "bf16 features equal the f32 ones: the products did not run in bf16");
    }
}
