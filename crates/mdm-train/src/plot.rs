//! Loss curves as PNG (plotters, bitmap backend). Text needs a TrueType font: the first of
//! `$MDM_FONT` and a few common system fonts (DejaVu Sans, Liberation Sans, Arial) is used; without
//! one the plot is skipped with a [`TrainError::Config`] saying so.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::TrainError;

/// One run's curves: training loss and validation points against training tokens, in bits per
/// token.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    /// Legend label.
    pub label: String,
    /// (tokens, training loss in bits per token).
    pub train: Vec<(f64, f64)>,
    /// (tokens, validation bits per token).
    pub valid: Vec<(f64, f64)>,
}

const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];

fn register_font() -> Result<(), TrainError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates = std::env::var("MDM_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("no TrueType font found for the plot: set MDM_FONT to a .ttf file".to_string())
    })
    .clone()
    .map_err(TrainError::Config)
}

/// Exponential moving average (the raw per-step loss is noisy).
fn smooth(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut avg = None;
    points
        .iter()
        .map(|&(x, y)| {
            let a = avg.map_or(y, |a: f64| a + alpha * (y - a));
            avg = Some(a);
            (x, a)
        })
        .collect()
}

/// Draws the curves of one or more runs into `path` (PNG, 900 x 560).
pub fn plot_curves(runs: &[Curves], title: &str, path: &Path) -> Result<(), TrainError> {
    register_font()?;
    let err = |e: String| TrainError::Config(format!("plot {}: {e}", path.display()));
    let all = runs.iter().flat_map(|r| r.train.iter().chain(&r.valid));
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        if y.is_finite() {
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    if !y_min.is_finite() {
        return Err(err("nothing to plot".into()));
    }
    let pad = ((y_max - y_min) * 0.05).max(0.05);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.02, (y_min - pad)..(y_max + pad))
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("training tokens")
        .y_desc("bits per token")
        .x_label_formatter(&|x| {
            if x_max >= 1e6 {
                format!("{:.1}M", x / 1e6)
            } else {
                format!("{:.0}k", x / 1e3)
            }
        })
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, run) in runs.iter().enumerate() {
        let color = palette[i % palette.len()];
        let light = color.mix(0.18);
        chart
            .draw_series(LineSeries::new(run.train.iter().copied(), light))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                smooth(&run.train, 0.05),
                color.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?
            .label(format!("{} train (smoothed)", run.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if !run.valid.is_empty() {
            chart
                .draw_series(run.valid.iter().map(|&p| Circle::new(p, 5, color.filled())))
                .map_err(|e| err(e.to_string()))?
                .label(format!("{} validation", run.label))
                .legend(move |(x, y)| Circle::new((x + 9, y), 5, color.filled()));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// The curves of the run in `out` (its `metrics.csv` and `validation.csv`).
pub fn run_curves(out: &Path, label: &str) -> Result<Curves, TrainError> {
    let ln2 = std::f64::consts::LN_2;
    let train = crate::metrics::read_columns(&out.join("metrics.csv"), "tokens", "loss")?
        .into_iter()
        .map(|(x, y)| (x, y / ln2))
        .collect();
    let valid_path = out.join("validation.csv");
    let valid = if valid_path.is_file() {
        crate::metrics::read_columns(&valid_path, "tokens", "bits_per_token")?
    } else {
        Vec::new()
    };
    Ok(Curves {
        label: label.to_string(),
        train,
        valid,
    })
}

/// IsoFLOP curves: validation loss (bits per token) against non-embedding parameters (log axis),
/// one line per model and budget, the fitted optimum of each marked with a cross.
pub fn plot_isoflops(
    results: &[crate::scaling::RunResult],
    fit: &crate::scaling::SweepFit,
    path: &Path,
) -> Result<(), TrainError> {
    register_font()?;
    let err = |e: String| TrainError::Config(format!("plot {}: {e}", path.display()));
    let bits = |nats: f64| nats / std::f64::consts::LN_2;
    if results.is_empty() {
        return Err(err("no runs to plot".into()));
    }
    let (mut n_lo, mut n_hi, mut y_lo, mut y_hi) = (f64::INFINITY, 0.0f64, f64::INFINITY, 0.0f64);
    for r in results {
        n_lo = n_lo.min(r.params as f64);
        n_hi = n_hi.max(r.params as f64);
        y_lo = y_lo.min(bits(r.valid_nats));
        y_hi = y_hi.max(bits(r.valid_nats));
    }
    let pad = ((y_hi - y_lo) * 0.08).max(0.05);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "IsoFLOP curves (thick: MDM bound, thin: baseline)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(
            ((n_lo * 0.8)..(n_hi * 1.25)).log_scale(),
            (y_lo - pad)..(y_hi + pad),
        )
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("non-embedding parameters")
        .y_desc("validation bits per token")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1e3))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let mut budgets: Vec<f64> = results.iter().map(|r| r.budget).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, &c) in budgets.iter().enumerate() {
        let color = palette[i % palette.len()];
        for model in ["mdm", "arm"] {
            let mut pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| r.budget == c && r.model == model)
                .map(|r| (r.params as f64, bits(r.valid_nats)))
                .collect();
            if pts.is_empty() {
                continue;
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let style = if model == "mdm" {
                color.stroke_width(2)
            } else {
                color.mix(0.6).stroke_width(1)
            };
            let series = chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(|e| err(e.to_string()))?;
            if model == "mdm" {
                series.label(format!("C = {c:.1e}")).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    for family in &fit.families {
        for (c, opt) in &family.optima {
            let i = budgets.iter().position(|b| b == c).unwrap_or(0);
            let color = palette[i % palette.len()];
            chart
                .draw_series(std::iter::once(Cross::new(
                    (opt.params, bits(opt.loss)),
                    8,
                    color.stroke_width(3),
                )))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Optimal loss against compute (log axes): each family's IsoFLOP optima and fitted power law.
pub fn plot_frontier(fit: &crate::scaling::SweepFit, path: &Path) -> Result<(), TrainError> {
    register_font()?;
    let err = |e: String| TrainError::Config(format!("plot {}: {e}", path.display()));
    let bits = |nats: f64| nats / std::f64::consts::LN_2;
    let all: Vec<(f64, f64)> = fit
        .families
        .iter()
        .flat_map(|f| f.optima.iter().map(|(c, o)| (*c, bits(o.loss))))
        .collect();
    if all.is_empty() {
        return Err(err("no IsoFLOP optima (each budget needs 3 sizes)".into()));
    }
    let (c_lo, c_hi) = all.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let (y_lo, y_hi) = all.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Optimal loss vs training compute", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(
            ((c_lo / 1.5)..(c_hi * 1.5)).log_scale(),
            (y_lo * 0.95)..(y_hi * 1.05),
        )
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("training FLOPs (6ND)")
        .y_desc("optimal validation bits per token")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (family, color) in fit.families.iter().zip([BLUE, RED]) {
        let name = if family.model == "mdm" {
            "MDM (bound)"
        } else {
            "baseline"
        };
        chart
            .draw_series(
                family
                    .optima
                    .iter()
                    .map(|(c, o)| Circle::new((*c, bits(o.loss)), 5, color.filled())),
            )
            .map_err(|e| err(e.to_string()))?;
        if let Some(law) = family.loss_law {
            let line: Vec<(f64, f64)> = (0..=40)
                .map(|i| {
                    let c = (c_lo / 1.5) * ((c_hi * 2.25 / c_lo).powf(i as f64 / 40.0));
                    (c, bits(law.eval(c)))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(format!(
                    "{name}: L = {:.3} C^{:.4}",
                    law.coefficient / std::f64::consts::LN_2,
                    law.exponent
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
