//! Metrics files of a run: `metrics.csv` (one row per optimizer step) and `validation.csv` (one
//! row per validation), appended as the run goes; a resumed run first drops rows past its
//! checkpoint so the files read as one uninterrupted run.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::io;
use crate::TrainError;

/// Header of `metrics.csv`.
pub const TRAIN_HEADER: &str = "step,tokens,lr,loss,grad_norm,tokens_per_s,elapsed_s";
/// Header of `validation.csv`.
pub const VALID_HEADER: &str = "step,tokens,nats_per_token,bits_per_token,stderr_bits,perplexity";

/// An append-only CSV file with a fixed header whose first column is the step.
#[derive(Debug, Clone)]
pub struct CsvLog {
    path: PathBuf,
}

impl CsvLog {
    /// Opens (or creates with `header`) `path`, dropping rows whose step is above `keep_through`.
    pub fn open(path: PathBuf, header: &str, keep_through: usize) -> Result<Self, TrainError> {
        let mut text = String::from(header);
        text.push('\n');
        if path.is_file() {
            let old = std::fs::read_to_string(&path).map_err(io(&path))?;
            for line in old.lines().skip(1) {
                let step = line.split(',').next().and_then(|s| s.parse::<usize>().ok());
                if step.is_some_and(|s| s <= keep_through) {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        crate::checkpoint::write_atomic(&path, text.as_bytes())?;
        Ok(Self { path })
    }

    /// Appends one row.
    pub fn append(&self, values: &[String]) -> Result<(), TrainError> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        writeln!(file, "{}", values.join(",")).map_err(io(&self.path))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Columns `x` and `y` (by header name) of a CSV file written by [`CsvLog`].
pub fn read_columns(path: &Path, x: &str, y: &str) -> Result<Vec<(f64, f64)>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| TrainError::Config(format!("{}: no column `{name}`", path.display())))
    };
    let (xi, yi) = (col(x)?, col(y)?);
    Ok(lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.get(xi)?.parse().ok()?, f.get(yi)?.parse().ok()?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_drops_rows_past_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let log = CsvLog::open(path.clone(), "step,loss", 0).unwrap();
        for s in 1..=5 {
            log.append(&[s.to_string(), (s as f64 / 2.0).to_string()])
                .unwrap();
        }
        CsvLog::open(path.clone(), "step,loss", 3).unwrap();
        assert_eq!(
            read_columns(&path, "step", "loss").unwrap(),
            vec![(1.0, 0.5), (2.0, 1.0), (3.0, 1.5)]
        );
        assert!(read_columns(&path, "step", "nope").is_err());
    }
}
