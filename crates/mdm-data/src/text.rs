//! Text files (plain or gzip-compressed) read as documents.

use std::io::Read;
use std::path::Path;

use crate::error::io;
use crate::DataError;

/// How a text file is cut into documents (each document is followed by the separator token in
/// the shards, so the model learns where documents end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentSplit {
    /// The whole file is one document.
    File,
    /// Every non-empty line is a document (e.g. one Bible verse a line).
    Lines,
    /// Blocks separated by blank lines are documents (line breaks inside a block are kept).
    #[default]
    Paragraphs,
}

impl std::str::FromStr for DocumentSplit {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "file" => Ok(Self::File),
            "lines" => Ok(Self::Lines),
            "paragraphs" => Ok(Self::Paragraphs),
            other => Err(DataError::Invalid {
                what: "document split",
                reason: format!("`{other}` (expected file, lines or paragraphs)"),
            }),
        }
    }
}

/// The text of `path`, decompressed when the name ends in `.gz`. Invalid UTF-8 is an error
/// naming the file.
pub fn read_text(path: &Path) -> Result<String, DataError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut text = String::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(io(path))?;
    } else {
        std::io::BufReader::new(file)
            .read_to_string(&mut text)
            .map_err(io(path))?;
    }
    Ok(text)
}

/// Cuts `text` into documents (trimmed of surrounding white space; empty ones dropped).
pub fn split_documents(text: &str, split: DocumentSplit) -> Vec<&str> {
    let docs: Vec<&str> = match split {
        DocumentSplit::File => vec![text],
        DocumentSplit::Lines => text.lines().collect(),
        DocumentSplit::Paragraphs => {
            let mut docs = Vec::new();
            let mut start: Option<usize> = None;
            let mut offset = 0;
            for line in text.split_inclusive('\n') {
                let blank = line.trim().is_empty();
                match (blank, start) {
                    (true, Some(s)) => {
                        docs.push(&text[s..offset]);
                        start = None;
                    }
                    (false, None) => start = Some(offset),
                    _ => {}
                }
                offset += line.len();
            }
            if let Some(s) = start {
                docs.push(&text[s..]);
            }
            docs
        }
    };
    docs.into_iter()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits() {
        let text = "a b\nc\n\n\n d \n\ne\n";
        assert_eq!(
            split_documents(text, DocumentSplit::File),
            vec![text.trim()]
        );
        assert_eq!(
            split_documents(text, DocumentSplit::Lines),
            vec!["a b", "c", "d", "e"]
        );
        assert_eq!(
            split_documents(text, DocumentSplit::Paragraphs),
            vec!["a b\nc", "d", "e"]
        );
    }

    #[test]
    fn gzip_round_trip() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.txt.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all("héllo\nworld".as_bytes()).unwrap();
        gz.finish().unwrap();
        assert_eq!(read_text(&path).unwrap(), "héllo\nworld");
        let missing = read_text(&dir.path().join("nope.txt")).unwrap_err();
        assert!(missing.to_string().contains("nope.txt"));
    }
}
