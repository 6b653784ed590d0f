//! What the benchmark processes measured, and the medians over `--rounds`.

use super::configs::Config;
use super::json::{get, Value};
use crate::util::{Error, Result};

/// What one `mae bench` / `torch_bench.py` run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    pub img_per_s: f64,
    pub step_s_median: f64,
    pub step_s_min: f64,
    pub step_s_max: f64,
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    pub peak_rss_mb: Option<f64>,
}

impl Run {
    pub fn from_json(obj: &[(String, Value)], what: &str) -> Result<Self> {
        let num = |k: &str| -> Result<f64> {
            get(obj, k)
                .and_then(Value::as_f64)
                .ok_or_else(|| Error::Failed(format!("{what}: its JSON output has no number `{k}`")))
        };
        Ok(Run {
            img_per_s: num("img_per_s")?,
            step_s_median: num("step_s_median")?,
            step_s_min: num("step_s_min")?,
            step_s_max: num("step_s_max")?,
            forward_s: num("forward_s")?,
            backward_s: num("backward_s")?,
            optimizer_s: num("optimizer_s")?,
            peak_rss_mb: get(obj, "peak_rss_mb").and_then(Value::as_f64),
        })
    }

    /// Several runs of one side as one: the medians of the rates and times,
    /// the fastest and slowest step of all, the highest peak RSS. One run
    /// gives itself back.
    pub fn summarise(runs: &[&Run]) -> Run {
        let med = |f: fn(&Run) -> f64| median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        Run {
            img_per_s: med(|r| r.img_per_s),
            step_s_median: med(|r| r.step_s_median),
            step_s_min: runs.iter().map(|r| r.step_s_min).fold(f64::INFINITY, f64::min),
            step_s_max: runs.iter().map(|r| r.step_s_max).fold(f64::NEG_INFINITY, f64::max),
            forward_s: med(|r| r.forward_s),
            backward_s: med(|r| r.backward_s),
            optimizer_s: med(|r| r.optimizer_s),
            peak_rss_mb: runs.iter().filter_map(|r| r.peak_rss_mb).reduce(f64::max),
        }
    }
}

/// The median (the mean of the middle two for an even count; NaN for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One round of a config: ours, then torch's with `--compare-torch`.
#[derive(Clone, Debug)]
pub struct Round {
    pub ours: Run,
    pub torch: Option<Run>,
    /// With `--dtype bf16`: torch in f32 too (`torch` is then its autocast run).
    pub torch_f32: Option<Run>,
}

impl Round {
    /// Images per second, ours / torch.
    pub fn ratio(&self) -> Option<f64> {
        self.torch.as_ref().map(|t| self.ours.img_per_s / t.img_per_s)
    }

    /// Images per second, ours / torch in f32 (with `--dtype bf16`).
    pub fn ratio_vs_torch_f32(&self) -> Option<f64> {
        self.torch_f32.as_ref().map(|t| self.ours.img_per_s / t.img_per_s)
    }
}

/// A config's result: its rounds and their summary.
pub struct Row {
    pub config: Config,
    pub rounds: Vec<Round>,
    pub candle_num_threads: Option<String>,
    /// [`Run::summarise`] of the rounds, each side.
    pub ours: Run,
    pub torch: Option<Run>,
    pub torch_f32: Option<Run>,
}

impl Row {
    pub fn new(config: Config, rounds: Vec<Round>, candle_num_threads: Option<String>) -> Self {
        let ours = Run::summarise(&rounds.iter().map(|r| &r.ours).collect::<Vec<_>>());
        let torch: Option<Vec<&Run>> = rounds.iter().map(|r| r.torch.as_ref()).collect();
        let torch = torch.filter(|t| !t.is_empty()).map(|t| Run::summarise(&t));
        let torch_f32: Option<Vec<&Run>> = rounds.iter().map(|r| r.torch_f32.as_ref()).collect();
        let torch_f32 = torch_f32.filter(|t| !t.is_empty()).map(|t| Run::summarise(&t));
        Row { config, rounds, candle_num_threads, ours, torch, torch_f32 }
    }

    pub fn gflops(&self) -> f64 {
        self.config.step_flops() / self.ours.step_s_median / 1e9
    }

    /// The median over the rounds of ours / torch images per second.
    pub fn ratio(&self) -> Option<f64> {
        let ratios: Option<Vec<f64>> = self.rounds.iter().map(Round::ratio).collect();
        ratios.filter(|r| !r.is_empty()).map(|r| median(&r))
    }

    /// The median over the rounds of ours / torch-in-f32 images per second.
    pub fn ratio_vs_torch_f32(&self) -> Option<f64> {
        let ratios: Option<Vec<f64>> = self.rounds.iter().map(Round::ratio_vs_torch_f32).collect();
        ratios.filter(|r| !r.is_empty()).map(|r| median(&r))
    }

    /// The ratio of the fastest steps (of all rounds): less sensitive to
    /// other processes on the machine than the medians.
    pub fn ratio_best(&self) -> Option<f64> {
        self.torch.as_ref().map(|t| t.step_s_min / self.ours.step_s_min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::configs::tests::all_configs;

    fn run(img_per_s: f64, step_s_min: f64) -> Run {
        Run { img_per_s, step_s_median: 64.0 / img_per_s, step_s_min, step_s_max: 1.0, ..Run::default() }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn one_round_is_itself() {
        let r = Run { peak_rss_mb: Some(500.0), ..run(100.0, 0.5) };
        let t = run(80.0, 0.6);
        let row = Row::new(
            all_configs()[0].clone(),
            vec![Round { ours: r.clone(), torch: Some(t.clone()), torch_f32: None }],
            None,
        );
        assert_eq!((&row.ours, row.torch.as_ref()), (&r, Some(&t)));
        assert_eq!(row.ratio(), Some(1.25));
        assert_eq!(row.ratio_best(), Some(0.6 / 0.5));
    }

    #[test]
    fn rounds_give_medians() {
        let rounds = vec![
            Round { ours: run(100.0, 0.5), torch: Some(run(50.0, 0.9)), torch_f32: None }, // 2.0
            Round { ours: run(90.0, 0.6), torch: Some(run(100.0, 0.5)), torch_f32: None }, // 0.9
            Round { ours: run(120.0, 0.4), torch: Some(run(100.0, 0.6)), torch_f32: None }, // 1.2
        ];
        let row = Row::new(all_configs()[0].clone(), rounds, None);
        assert_eq!(row.ours.img_per_s, 100.0);
        assert_eq!(row.torch.as_ref().map(|t| t.img_per_s), Some(100.0));
        // The median of the per-round ratios, not the ratio of the medians.
        assert_eq!(row.ratio(), Some(1.2));
        assert_eq!((row.ours.step_s_min, row.torch.as_ref().unwrap().step_s_min), (0.4, 0.5));
        // Without torch there is no ratio.
        let row = Row::new(
            all_configs()[0].clone(),
            vec![Round { ours: run(1.0, 1.0), torch: None, torch_f32: None }],
            None,
        );
        assert!(row.torch.is_none() && row.ratio().is_none() && row.ratio_best().is_none());
    }
}
