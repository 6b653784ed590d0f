//! Tests of the `mae` binary (and of the evaluation crate it drives), in one test binary (every
//! test binary links candle statically; one keeps the CI disk in bounds). Filter a group with
//! `cargo test -p mae-cli --test it cli::`.

#[path = "../../../mae/tests/it/common/mod.rs"]
mod common;

mod channels;
mod classify;
mod cli;
mod data_formats;
mod distributed;
mod kill_sweep;
mod products;
mod run_mae;
mod training;
