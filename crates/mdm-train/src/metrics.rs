//! Metrics files of a run: `metrics.csv` (one [`TrainRow`] per optimizer step) and
//! `validation.csv` (one [`ValidRow`] per validation), appended as the run goes; a resumed run
//! first drops rows past its checkpoint so the files read as one uninterrupted run.
//!
//! Rows are serde types written and read by the `csv` crate ([`CsvTable`]), so a column is found
//! by its header name, never by its index, and a malformed file is an error naming the file and
//! line.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::TrainError;

/// One optimizer step, a row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRow {
    /// Optimizer steps completed.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Mean loss of its micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Throughput over the recent window.
    pub tokens_per_s: f64,
    /// Wall-clock seconds of training so far.
    pub elapsed_s: f64,
}

/// One validation, a row of `validation.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidRow {
    /// Optimizer steps completed.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Validation loss, nats per token (MDM: the ELBO bound).
    pub nats_per_token: f64,
    /// The same in bits.
    pub bits_per_token: f64,
    /// Standard error of the bits across blocks.
    pub stderr_bits: f64,
    /// `2^bits` (an upper bound for the MDM).
    pub perplexity: f64,
}

/// A CSV file of serde rows `R` with a header line, appended row by row.
#[derive(Debug, Clone)]
pub struct CsvTable<R> {
    path: PathBuf,
    _row: PhantomData<R>,
}

fn csv_error(path: &Path, e: csv::Error) -> TrainError {
    let line = e.position().map(|p| p.line());
    TrainError::Csv {
        file: path.to_path_buf(),
        line,
        reason: match e.into_kind() {
            csv::ErrorKind::Io(e) => e.to_string(),
            csv::ErrorKind::Deserialize { err, .. } => err.to_string(),
            other => format!("{other:?}"),
        },
    }
}

impl<R: CsvRow> CsvTable<R> {
    /// Opens `path`, keeping the rows for which `keep` holds (all of a new file: none), and
    /// rewrites it (header first) through a temporary file and a rename.
    pub fn open_keeping(path: PathBuf, keep: impl Fn(&R) -> bool) -> Result<Self, TrainError> {
        let rows = if path.is_file() {
            Self::read(&path)?
        } else {
            Vec::new()
        };
        let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
        if rows.iter().all(|r| !keep(r)) {
            // serde writes the header with the first row: an empty table gets it from the type
            writer
                .write_record(R::COLUMNS)
                .map_err(|e| csv_error(&path, e))?;
        }
        for row in rows.iter().filter(|r| keep(r)) {
            writer.serialize(row).map_err(|e| csv_error(&path, e))?;
        }
        let bytes = writer.into_inner().map_err(|e| TrainError::Io {
            file: path.clone(),
            source: e.into_error(),
        })?;
        crate::checkpoint::write_atomic(&path, &bytes)?;
        Ok(Self {
            path,
            _row: PhantomData,
        })
    }

    /// Appends one row.
    pub fn append(&self, row: &R) -> Result<(), TrainError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        writer
            .serialize(row)
            .map_err(|e| csv_error(&self.path, e))?;
        writer.flush().map_err(io(&self.path))
    }

    /// Every row of `path`.
    pub fn read(path: &Path) -> Result<Vec<R>, TrainError> {
        let mut reader = csv::Reader::from_path(path).map_err(|e| csv_error(path, e))?;
        reader
            .deserialize()
            .collect::<Result<Vec<R>, _>>()
            .map_err(|e| csv_error(path, e))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A row type of a [`CsvTable`]: a flat serde struct whose field names, in order, are
/// `COLUMNS` (the header of a table with no rows yet; a test checks they agree with serde's).
pub trait CsvRow: Serialize + DeserializeOwned {
    /// The header.
    const COLUMNS: &'static [&'static str];
}

impl CsvRow for TrainRow {
    const COLUMNS: &'static [&'static str] = &[
        "step",
        "tokens",
        "lr",
        "loss",
        "grad_norm",
        "tokens_per_s",
        "elapsed_s",
    ];
}

impl CsvRow for ValidRow {
    const COLUMNS: &'static [&'static str] = &[
        "step",
        "tokens",
        "nats_per_token",
        "bits_per_token",
        "stderr_bits",
        "perplexity",
    ];
}

/// Columns `x` and `y` (by header name) of a CSV file with a header line, as numbers; rows where
/// either is not a number are skipped.
pub fn read_columns(path: &Path, x: &str, y: &str) -> Result<Vec<(f64, f64)>, TrainError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| csv_error(path, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| TrainError::Csv {
                file: path.to_path_buf(),
                line: Some(1),
                reason: format!("no column `{name}`"),
            })
    };
    let (xi, yi) = (col(x)?, col(y)?);
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let value = |i: usize| record.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(a), Some(b)) = (value(xi), value(yi)) {
            out.push((a, b));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: usize) -> TrainRow {
        TrainRow {
            step,
            tokens: 64 * step as u64,
            lr: 1e-3,
            loss: step as f64 / 2.0,
            grad_norm: 0.5,
            tokens_per_s: 100.0,
            elapsed_s: 1.5,
        }
    }

    #[test]
    fn reopening_drops_rows_past_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let log = CsvTable::<TrainRow>::open_keeping(path.clone(), |_| true).unwrap();
        for s in 1..=5 {
            log.append(&row(s)).unwrap();
        }
        CsvTable::<TrainRow>::open_keeping(path.clone(), |r| r.step <= 3).unwrap();
        assert_eq!(
            CsvTable::<TrainRow>::read(&path).unwrap(),
            (1..=3).map(row).collect::<Vec<_>>()
        );
        assert_eq!(
            read_columns(&path, "step", "loss").unwrap(),
            vec![(1.0, 0.5), (2.0, 1.0), (3.0, 1.5)]
        );
        assert!(read_columns(&path, "step", "nope").is_err());
    }

    #[test]
    fn headers_are_the_serde_field_names() {
        fn serde_header<R: CsvRow>(row: &R) -> String {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.serialize(row).unwrap();
            let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
            text.lines().next().unwrap().to_string()
        }
        assert_eq!(serde_header(&row(1)), TrainRow::COLUMNS.join(","));
        let v = ValidRow {
            step: 1,
            tokens: 2,
            nats_per_token: 3.0,
            bits_per_token: 4.0,
            stderr_bits: 5.0,
            perplexity: 6.0,
        };
        assert_eq!(serde_header(&v), ValidRow::COLUMNS.join(","));
        // an empty table has the header too, and reads back as no rows
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.csv");
        CsvTable::<ValidRow>::open_keeping(path.clone(), |_| true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim_end(), ValidRow::COLUMNS.join(","));
        assert!(CsvTable::<ValidRow>::read(&path).unwrap().is_empty());
    }

    #[test]
    fn a_malformed_row_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let mut text = TrainRow::COLUMNS.join(",");
        text.push_str("\n1,64,0.001,0.5,0.5,100,1.5\n2,x,0.001,0.5,0.5,100,1.5\n");
        std::fs::write(&path, text).unwrap();
        match CsvTable::<TrainRow>::read(&path) {
            Err(TrainError::Csv { file, line, .. }) => {
                assert_eq!((file, line), (path, Some(3)));
            }
            other => panic!("{other:?}"),
        }
    }
}
