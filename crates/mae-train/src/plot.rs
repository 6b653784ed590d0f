//! Curves of a run as PNGs: the loss (raw per step and an exponential moving average,
//! log-scaled when it spans a decade) and the process's resident memory (a leak climbs).

use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Result, TrainError};
use crate::metrics::StepRecord;

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // A bundled font: the plot must not depend on the machine's font setup.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// What one plot shows: the y axis (the series are always the raw values and their moving
/// average).
struct Series {
    y_desc: &'static str,
    /// A log axis when the values span a decade or more.
    log_when_wide: bool,
}

/// Draws the loss of `records` into `path` (PNG, 900x500).
pub fn plot_loss(records: &[StepRecord], title: &str, path: &Path) -> Result<()> {
    let points: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.loss.is_finite() && r.loss > 0.0)
        .map(|r| (r.step as f64, r.loss))
        .collect();
    let series = Series { y_desc: "loss (masked-patch MSE)", log_when_wide: true };
    plot(points, &series, title, path)
}

/// Draws the resident memory of `records` (steps that have it) into `path` (PNG, 900x500).
pub fn plot_memory(records: &[StepRecord], title: &str, path: &Path) -> Result<()> {
    let points: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.rss_mb.filter(|m| m.is_finite()).map(|m| (r.step as f64, m)))
        .collect();
    let series = Series { y_desc: "resident memory (MB)", log_when_wide: false };
    plot(points, &series, title, path)
}

fn plot(points: Vec<(f64, f64)>, series: &Series, title: &str, path: &Path) -> Result<()> {
    register_font();
    let fail = |e: String| TrainError::checkpoint(path, format!("cannot draw {}: {e}", path.display()));
    if points.is_empty() {
        return Ok(());
    }
    // Smooth over about a fiftieth of the run, bias-corrected so the start does not lag.
    let alpha = (50.0 / points.len() as f64).clamp(0.02, 0.5);
    let mut ema = Vec::with_capacity(points.len());
    let (mut acc, mut weight) = (0.0, 0.0);
    for &(x, y) in &points {
        acc = (1.0 - alpha) * acc + alpha * y;
        weight = (1.0 - alpha) * weight + alpha;
        ema.push((x, acc / weight));
    }
    let x_max = points.last().map_or(1.0, |p| p.0).max(1.0);
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (lo, hi) = if series.log_when_wide { (lo * 0.9, hi * 1.1) } else { (0.0, hi * 1.1) };

    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    // A log axis only when the loss spans a decade or more: plotters labels log axes at powers
    // of ten, which would leave a shorter range without any label.
    if series.log_when_wide && hi / lo >= 10.0 {
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(|e| fail(e.to_string()))?;
        draw(chart, series, points, ema).map_err(fail)?;
    } else {
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, lo..hi)
            .map_err(|e| fail(e.to_string()))?;
        draw(chart, series, points, ema).map_err(fail)?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

type Chart<'a, Y> =
    ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

/// Mesh, the two series and the legend.
fn draw<Y>(
    mut chart: Chart<'_, Y>,
    series: &Series,
    points: Vec<(f64, f64)>,
    ema: Vec<(f64, f64)>,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(series.y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    let light = RGBColor(170, 190, 230);
    let dark = RGBColor(20, 60, 160);
    chart
        .draw_series(LineSeries::new(points, light.stroke_width(1)))
        .map_err(|e| e.to_string())?
        .label("per step")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], light));
    chart
        .draw_series(LineSeries::new(ema, dark.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("moving average")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], dark));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}
