//! The `mae` crate's integration tests, in one test binary: each file below was its own binary
//! once, and every binary links candle statically with its own copy, which filled the CI disk.
//! Run one group with a filter: `cargo test -p mae --test it hub::`.

mod common;

mod channels;
mod export;
mod gradients;
mod hub;
mod mixed_precision;
mod nccl;
mod parity_hf;
mod parity_lightly;
mod weights_io;
