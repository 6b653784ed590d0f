//! What a user types: `mae` command lines and the TOML config files of `--config` and of run
//! folders (`--resume`), through `mae_cli::check`, which parses and resolves them as the
//! commands do before they read any data or weights.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{put, Target};
use crate::seeds::Seed;

/// Command lines: clap's parser, the settings merge and validation. No tensors are made; the
/// largest allocations are clap's command tree and the resolved settings (well under 1 MiB).
/// 8 MiB plus 64x (a config file named on the command line may be read too).
pub const CLI: Target = Target {
    name: "cli",
    about:
        "mae_cli::check::command_line on whitespace-separated argv (parse, merge --config, resolve, validate)",
    seeds: cli_seeds,
    dict: &[
        b" --steps ",
        b" --epochs ",
        b" --batch-size ",
        b" --accum ",
        b" --preset ",
        b" --data ",
        b" --lr ",
        b" --warmup-epochs ",
        b" --mask-ratio ",
        b" --img-size ",
        b" --clip-grad ",
        b" --resume ",
        b" --config ",
        b" --k ",
        b" --temperature ",
        b" 0 ",
        b" -1 ",
        b" nan ",
        b" inf ",
        b" 1e308 ",
        b" 18446744073709551616 ",
        b" 4294967297 ",
        b" -- ",
        b"=",
    ],
    alloc_base: 8 << 20,
    alloc_factor: 64,
    run: run_cli,
};

/// Config files: the TOML parser, the key-by-key check of `--config`, the resolved settings of
/// a run folder. Parsed TOML holds a few times the text. 1 MiB plus 64x.
pub const TOML_CONFIG: Target = Target {
    name: "toml-config",
    about:
        "a --config file resolved as mae pretrain does, and a run folder's config.toml as --resume reads it",
    seeds: toml_seeds,
    dict: &[
        b"batch_size = ",
        b"steps = ",
        b"epochs = ",
        b"preset = ",
        b"[model]\n",
        b"[finetune]\n",
        b"command = \"finetune\"\n",
        b"= 0\n",
        b"= -1\n",
        b"= nan\n",
        b"= inf\n",
        b"= 1e400\n",
        b"= 9223372036854775807\n",
        b"= \"\"\n",
        b"= []\n",
        b"= {}\n",
    ],
    alloc_base: 1 << 20,
    alloc_factor: 64,
    run: run_toml,
};

/// Command lines from the README and `mae --help`, one per seed.
const COMMAND_LINES: &[&str] = &[
    "pretrain",
    "pretrain --steps 30 --batch-size 8 --preset mae-vit-micro-patch4-32 --data synthetic:64",
    "pretrain --data hf:ylecun/mnist --preset mae-vit-tiny-patch4-32 --epochs 20",
    "pretrain --preset mae-vit-base-patch16 --data folder:imagenet@train --epochs 800 --warmup-epochs 40 \
     --batch-size 64 --accum 64 --base-lr 1.5e-4 --weight-decay 0.05 --mask-ratio 0.75 --norm-pix-loss true",
    "pretrain --steps 4 --clip-grad 1.0 --max-nonfinite 2 --knn-every 2 --img-size 32 --seed 7 --keep-last 1",
    "pretrain --resume runs/none",
    "linear-probe --preset mae-vit-micro-patch4-32 --train synthetic@train --test synthetic@test --epochs 2",
    "finetune --preset mae-vit-micro-patch4-32 --train synthetic@train --test synthetic@test --steps 3 \
     --layer-decay 0.75 --drop-path 0.1 --label-smoothing 0.1 --clip-grad 5",
    "knn --preset mae-vit-micro-patch4-32 --train mnist:data/mnist@train --test mnist:data/mnist@test --k 20 \
     --temperature 0.07",
    "bench --preset mae-vit-micro-patch4-32 --batch-size 16 --steps 5 --json",
    "reconstruct --weights runs/x --image photo.png --out rec.png",
    "embed --weights runs/x --data synthetic:8 --out e.safetensors",
    "info --presets --json",
    "export --weights runs/x --format timm --out w.safetensors",
    "stats --data synthetic:8 --in-channels 1 --img-size 32 --limit 4 --json",
    "pretrain --in-channels 1 --mean 0.2 --std 0.3 --steps 2",
    "pretrain --init facebook/vit-mae-base --in-channels 1 --data folder:scans --steps 2",
];

fn cli_seeds() -> Vec<Seed> {
    COMMAND_LINES.iter().map(|line| Seed::new(*line, line.as_bytes().to_vec())).collect()
}

fn run_cli(_dir: &Path, input: &[u8]) -> Result<(), String> {
    let argv = std::iter::once(OsStr::new("mae"))
        .chain(input.split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty()).map(OsStr::from_bytes));
    let _ = mae_cli::check::command_line(argv);
    Ok(())
}

fn toml_seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for line in [COMMAND_LINES[1], COMMAND_LINES[3], COMMAND_LINES[6], COMMAND_LINES[7]] {
        let argv = std::iter::once("mae").chain(line.split_whitespace());
        if let Ok(text) = mae_cli::check::resolved_config(argv) {
            seeds.push(Seed::new(format!("config.toml of `mae {line}`"), text.into_bytes()));
        }
    }
    for text in
        ["batch_size = 8\nsteps = 3\n", "preset = \"mae-vit-micro-patch4-32\"\nepochs = 2\nbase_lr = 1e-3\n"]
    {
        seeds.push(Seed::new(format!("--config {text:?}"), text.as_bytes().to_vec()));
    }
    seeds
}

fn run_toml(dir: &Path, input: &[u8]) -> Result<(), String> {
    let path = put(dir, "config.toml", input)?;
    let _ = mae_cli::check::pretrain_config_file(&path);
    let _ = mae_cli::check::run_config(dir);
    Ok(())
}
