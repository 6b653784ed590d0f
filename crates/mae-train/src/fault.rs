//! Fault injection for the crash tests (a run killed inside a checkpoint, a rank failing in
//! the all-reduce). Compiled in only with the `fault-inject` feature, which only test builds
//! enable (as a dev-dependency feature): a release binary never reads [`FAULT_ENV`].

/// Environment variable the crash tests set:
/// - `abort-in-checkpoint`: abort the process after a checkpoint's model file is written and
///   before the checkpoint is complete; `abort-in-checkpoint:N` only in the checkpoint of step N;
/// - `fail-rank:R:step:S`: rank R returns an error in step S (1-based, as logged), after its
///   backward pass and before the gradients are reduced, i.e. while the other ranks wait for it.
pub const FAULT_ENV: &str = "MAE_FAULT_INJECT";

#[cfg(feature = "fault-inject")]
fn spec() -> Option<String> {
    std::env::var(FAULT_ENV).ok()
}

#[cfg(not(feature = "fault-inject"))]
fn spec() -> Option<String> {
    None
}

/// Whether the checkpoint of `step` must abort the process half-written.
pub(crate) fn abort_in_checkpoint(step: usize) -> bool {
    match spec().as_deref() {
        Some("abort-in-checkpoint") => true,
        Some(v) => v.strip_prefix("abort-in-checkpoint:").and_then(|n| n.parse().ok()) == Some(step),
        None => false,
    }
}

/// The error `rank` must fail with in `step`, if the tests asked for one.
pub(crate) fn failure_in_step(rank: usize, step: usize) -> Option<String> {
    let spec = spec()?;
    let rest = spec.strip_prefix("fail-rank:")?;
    let (r, s) = rest.split_once(":step:")?;
    let (r, s) = (r.parse::<usize>().ok()?, s.parse::<usize>().ok()?);
    (r == rank && s == step).then(|| format!("rank {rank} fails in step {step} ({FAULT_ENV}={spec})"))
}
