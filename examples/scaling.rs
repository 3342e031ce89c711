//! IsoFLOP sweep of MDMs and autoregressive baselines, then the scaling-law fits and plots.
//!
//! ```text
//! cargo run --release --example scaling -- --grid docs/scaling.toml
//! cargo run --release --example scaling -- --grid docs/scaling.toml --fit-only
//! ```
//! Re-running the same command resumes: finished runs (rows of `<out>/results.csv`) are skipped and
//! an interrupted run continues from its last checkpoint. Writes `<out>/fits.json`,
//! `<out>/isoflop.png` and `<out>/frontier.png`.

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use mdm::backend::{self, Training};
use mdm::train::plot::{plot_frontier, plot_isoflops};
use mdm::train::scaling::{fit_sweep, read_results, run_sweep, RunEvent, ScalingGrid};

#[derive(Parser, Debug)]
#[command(about = "IsoFLOP sweep (budgets x sizes x {mdm, arm}), power-law fits and plots")]
struct Args {
    /// The grid (TOML; see mdm::train::scaling).
    #[arg(long)]
    grid: PathBuf,
    /// Only fit and plot the results already in `<out>/results.csv`.
    #[arg(long)]
    fit_only: bool,
    /// This machine's devices, one peer each (`cpu:2`, `cuda:0,cuda:1`); default: the backend's
    /// default device.
    #[arg(long, default_value = "")]
    devices: String,
    /// Log lines instead of progress bars.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let mut grid = ScalingGrid::from_file(&args.grid)?;
    grid.train.parallel.devices = args.devices.clone();
    let results = if args.fit_only {
        read_results(&grid.out.join("results.csv"))?
    } else {
        let runs = grid.points().count();
        println!(
            "sweep of {runs} runs ({} budgets, {} sizes, {} models) on {}, backend {}",
            grid.budgets.len(),
            grid.sizes.len(),
            grid.models.len(),
            grid.data.display(),
            backend::NAME
        );
        run_sweep::<Training>(
            &grid,
            !args.no_progress,
            &backend::devices(&args.devices)?,
            |event| match event {
                RunEvent::Skipped(run) => println!("{run}: done before, skipped"),
                RunEvent::Started {
                    run,
                    steps,
                    resumed,
                } => println!(
                    "{run}: {} {steps} steps",
                    if *resumed { "resuming," } else { "training" }
                ),
                RunEvent::Finished(r) => println!(
                    "{}: N = {}, D = {}, valid {:.4} ± {:.4} bits/token, {:.0} s",
                    r.run,
                    r.params,
                    r.tokens,
                    r.valid_nats / std::f64::consts::LN_2,
                    r.valid_stderr / std::f64::consts::LN_2,
                    r.wall_s
                ),
            },
        )?
    };
    let fit = fit_sweep(&results)?;
    let bits = std::f64::consts::LN_2;
    for family in &fit.families {
        println!("\n{}:", family.model);
        for (c, o) in &family.optima {
            println!(
                "  C = {c:.1e}: N* = {:.0}, L* = {:.4} bits/token{}",
                o.params,
                o.loss / bits,
                if o.interior {
                    ""
                } else {
                    " (best run: no interior minimum)"
                }
            );
        }
        if let Some(l) = family.loss_law {
            println!(
                "  L*(C) = {:.3} C^{:.4} nats  (exponent 95% CI [{:.4}, {:.4}], {} budgets)",
                l.coefficient, l.exponent, l.exponent_ci.0, l.exponent_ci.1, l.points
            );
        }
        if let Some(n) = family.params_law {
            println!(
                "  N*(C) = {:.3e} C^{:.3}  (exponent 95% CI [{:.3}, {:.3}])",
                n.coefficient, n.exponent, n.exponent_ci.0, n.exponent_ci.1
            );
        }
    }
    for g in &fit.compute_gap {
        println!(
            "compute gap at C = {:.1e}: the MDM needs {:.1}x the baseline's compute \
             (95% CI [{:.1}, {:.1}])",
            g.budget, g.gap, g.ci.0, g.ci.1
        );
    }
    let json = grid.out.join("fits.json");
    std::fs::write(&json, serde_json::to_string_pretty(&fit)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let iso = grid.out.join("isoflop.png");
    let frontier = grid.out.join("frontier.png");
    match plot_isoflops(&results, &fit, &iso).and_then(|_| plot_frontier(&fit, &frontier)) {
        Ok(()) => println!(
            "\nwrote {}, {} and {}",
            json.display(),
            iso.display(),
            frontier.display()
        ),
        Err(e) => println!("\nwrote {}; plots skipped: {e}", json.display()),
    }
    Ok(())
}
