//! `mae pretrain --devices 0,1,2,3`: data parallel over several GPUs of this machine, one
//! process per GPU (as PyTorch's `torchrun` / DDP does), joined by NCCL.
//!
//! This process makes the job's NCCL unique id, starts itself once per device with
//! `--device cuda:K` and the id, rank and world size in the environment, and watches the ranks:
//! when one exits with an error the others are stopped at once (a rank waiting in an NCCL
//! collective for a peer that is gone would otherwise wait forever), and the job exits non-zero.

use std::ffi::OsString;
use std::process::{Child, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// `0,1,2,3` -> `[0, 1, 2, 3]`. A GPU may not repeat: NCCL refuses two ranks on one device
/// ("Duplicate GPU detected", seen with NCCL 2.28 on an H200), so say so before starting.
pub fn parse_devices(spec: &str) -> Result<Vec<usize>> {
    let devices = spec
        .split(',')
        .map(|s| {
            s.trim().parse::<usize>().with_context(|| format!("--devices {spec}: `{s}` is not a GPU number"))
        })
        .collect::<Result<Vec<_>>>()?;
    if devices.is_empty() {
        bail!("--devices {spec}: name at least one GPU");
    }
    if let Some(twice) = devices.iter().find(|d| devices.iter().filter(|e| e == d).count() > 1) {
        bail!(
            "--devices {spec}: GPU {twice} is named twice; NCCL runs one process per GPU and refuses two on one \
             device (for a larger batch on one GPU use --batch-size or --accum)"
        );
    }
    Ok(devices)
}

/// The command line of one rank: ours without `--devices`, with `--device cuda:K`.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub fn rank_args(args: &[OsString], device: usize) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        match arg.to_str() {
            Some("--devices") => skip_value = true,
            Some(a) if a.starts_with("--devices=") => {}
            _ => out.push(arg.clone()),
        }
    }
    out.push("--device".into());
    out.push(format!("cuda:{device}").into());
    out
}

/// Starts one rank per device and waits for all of them.
pub fn launch(spec: &str) -> Result<ExitCode> {
    let devices = parse_devices(spec)?;
    launch_nccl(&devices)
}

#[cfg(not(feature = "nccl"))]
fn launch_nccl(devices: &[usize]) -> Result<ExitCode> {
    bail!(
        "--devices {devices:?}: this mae was built without NCCL; build it with `cargo xtask build --cuda --nccl --bins` \
         (or run one process with --device cuda:N)"
    )
}

#[cfg(feature = "nccl")]
fn launch_nccl(devices: &[usize]) -> Result<ExitCode> {
    use mae_train::collective::NcclLaunch;
    use std::process::Command;

    let world_size = devices.len();
    let id = NcclLaunch::new_id()?;
    let exe = std::env::current_exe().context("cannot find the mae executable to start the ranks")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    eprintln!("mae: starting {world_size} processes on GPUs {devices:?} (NCCL)");
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(world_size);
    for (rank, &device) in devices.iter().enumerate() {
        let child = Command::new(&exe)
            .args(rank_args(&args, device))
            .envs(NcclLaunch::env_for(&id, rank, world_size))
            .spawn()
            .with_context(|| format!("cannot start rank {rank} ({})", exe.display()));
        match child {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                stop_all(&mut children);
                return Err(e);
            }
        }
    }
    supervise(children, world_size)
}

/// Waits until every rank exits; the first failure stops the rest.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
fn supervise(mut children: Vec<(usize, Child)>, world_size: usize) -> Result<ExitCode> {
    loop {
        let mut i = 0;
        while i < children.len() {
            let rank = children[i].0;
            match children[i].1.try_wait().with_context(|| format!("cannot watch rank {rank}"))? {
                None => i += 1,
                Some(status) if status.success() => {
                    children.swap_remove(i);
                }
                Some(status) => {
                    stop_all(&mut children);
                    eprintln!(
                        "mae: rank {rank} exited with {status}: stopped the other {} process(es). The newest complete \
                         checkpoint stays valid; continue with the same --devices and `--resume RUN_DIR`",
                        world_size - 1
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        if children.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
fn stop_all(children: &mut [(usize, Child)]) {
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
    }
    for (_, child) in children.iter_mut() {
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn devices_parse_and_reject_garbage() {
        assert_eq!(parse_devices("0,1, 3").unwrap(), vec![0, 1, 3]);
        assert!(parse_devices("0,1,0").unwrap_err().to_string().contains("GPU 0 is named twice"));
        assert!(parse_devices("0,x").unwrap_err().to_string().contains("`x`"));
        assert!(parse_devices("").is_err());
    }

    #[test]
    fn rank_args_drop_devices_and_name_the_gpu() {
        let args: Vec<OsString> = ["pretrain", "--devices", "0,1", "--steps", "5", "--devices=2"]
            .iter()
            .map(OsString::from)
            .collect();
        let out: Vec<String> = rank_args(&args, 1).into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(out, ["pretrain", "--steps", "5", "--device", "cuda:1"]);
    }

    #[test]
    fn a_failing_rank_stops_the_others() {
        // Rank 0 would run for a minute; rank 1 fails at once.
        let sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        let failer = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let start = std::time::Instant::now();
        let code = supervise(vec![(0, sleeper), (1, failer)], 2).unwrap();
        assert_eq!(code, ExitCode::FAILURE);
        assert!(start.elapsed() < Duration::from_secs(10), "the sleeping rank was not stopped");
    }
}
