//! The MAE learning-rate schedule: `lr = base_lr * effective_batch / 256`, linear warm-up, then a
//! half-cycle cosine down to a floor (facebookresearch/mae `util/lr_sched.py`, per step).

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    /// The peak learning rate (already scaled by the batch size).
    pub peak_lr: f64,
    pub min_lr: f64,
    /// Steps of linear warm-up; a fraction when the warm-up is a fraction of an epoch's steps
    /// (the paper's `adjust_learning_rate` works in fractional epochs, so 1.5 epochs of 5 steps
    /// warm up over 7.5 steps, not 8).
    pub warmup_steps: f64,
    pub total_steps: usize,
}

impl LrSchedule {
    /// The paper's scaling rule: `base_lr * effective_batch / 256`.
    pub fn scaled_lr(base_lr: f64, effective_batch: usize) -> f64 {
        base_lr * effective_batch as f64 / 256.0
    }

    /// Learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let (step, warmup) = (step as f64, self.warmup_steps);
        if step < warmup {
            return self.peak_lr * step / warmup;
        }
        let span = self.total_steps as f64 - warmup;
        // A warm-up as long as the run leaves no cosine: the floor after it.
        let progress = if span > 0.0 { ((step - warmup) / span).min(1.0) } else { 1.0 };
        self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_follows_a_half_cosine_to_the_floor() {
        let s = LrSchedule { peak_lr: 1e-3, min_lr: 1e-5, warmup_steps: 10.0, total_steps: 110 };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 5e-4).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        // Halfway through the cosine: the mean of peak and floor.
        assert!((s.lr(60) - (1e-3 + 1e-5) / 2.0).abs() < 1e-12);
        assert!((s.lr(110) - 1e-5).abs() < 1e-12);
        assert!((s.lr(500) - 1e-5).abs() < 1e-12, "stays at the floor");
        assert!((1..110).all(|t| t <= 10 || s.lr(t) <= s.lr(t - 1)), "monotone after warm-up");
        assert_eq!(LrSchedule::scaled_lr(1.5e-4, 4096), 2.4e-3);
    }
}
