//! MAE-specific training behaviour: which parameters get weight decay, and the k-NN monitor.

use std::process::Command;

use candle_core::Device;
use mae::{MaeConfig, MaskedAutoencoder};
use mae_train::{AdamW, AdamWConfig};

#[test]
fn weight_decay_spares_biases_norms_and_1d_parameters_as_in_the_paper() {
    let mut config = MaeConfig::preset("mae-vit-tiny-patch4-32").unwrap();
    config.encoder.depth = 1;
    config.decoder.depth = 1;
    let model = MaskedAutoencoder::new(&config, 0, &Device::Cpu).unwrap();
    let optimizer = AdamW::new(model.named_vars(), AdamWConfig::default()).unwrap();
    let (decay, no_decay) = optimizer.groups();
    for name in [
        "blocks.0.attn.qkv.weight",
        "patch_embed.proj.weight",
        "decoder_pred.weight",
        "cls_token",
        "mask_token",
    ] {
        assert!(
            decay.contains(&name),
            "{name} is decayed (timm's add_weight_decay: only 1-D and biases are not)"
        );
    }
    for name in [
        "blocks.0.attn.qkv.bias",
        "blocks.0.norm1.weight",
        "norm.bias",
        "decoder_norm.weight",
        "decoder_embed.bias",
    ] {
        assert!(no_decay.contains(&name), "{name} is not decayed");
    }
    // The fixed sin-cos tables are not variables at all.
    assert!(!decay.iter().chain(&no_decay).any(|n| n.contains("pos_embed")));
    assert_eq!(decay.len() + no_decay.len(), model.named_vars().len());
}

#[test]
fn the_knn_monitor_writes_its_accuracy_to_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mae"))
        .args([
            "pretrain",
            "--data",
            "synthetic:64",
            "--batch-size",
            "16",
            "--epochs",
            "1",
            "--knn-every",
            "1",
            "--knn-train",
            "synthetic:80",
            "--knn-test",
            "synthetic:40@test",
            "--progress",
            "silent",
            "--out",
            "run",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let line = metrics.lines().find(|l| l.contains("knn_top1")).expect("a k-NN line");
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    let top1 = value["knn_top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1), "{line}");
    assert!(dir.path().join("run/reconstructions/epoch-0000.png").is_file());
}
