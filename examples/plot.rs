//! Draw the loss curves of several `pretrain` runs into one PNG.
//!
//! ```text
//! cargo run --release --example plot -- --run runs/kjv-mdm:MDM --run runs/kjv-arm:ARM \
//!     --title "KJV, 3.4M non-embedding parameters" --out docs/img/kjv-loss.png
//! ```

/// mimalloc, keeping freed pages (`mdm::Allocator`: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mdm::Allocator = mdm::Allocator;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use mdm::train::plot::{plot_curves, run_curves};

#[derive(Parser, Debug)]
#[command(
    about = "Plot the loss curves of pretrain runs (training loss and validation, bits per token)"
)]
struct Args {
    /// A run folder and its legend label, `DIR:LABEL` (repeatable).
    #[arg(long, required = true)]
    run: Vec<String>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Title.
    #[arg(long, default_value = "loss")]
    title: String,
}

fn main() -> std::process::ExitCode {
    mdm::cli::exit(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let runs = args
        .run
        .iter()
        .map(|spec| {
            let (dir, label) = spec.rsplit_once(':').unwrap_or((spec, spec));
            run_curves(dir.as_ref(), label).with_context(|| format!("reading run {dir}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    plot_curves(&runs, &args.title, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
