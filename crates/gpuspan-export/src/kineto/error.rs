//! [`ReadError`]: why a trace file could not be read, in one line that names the file.

use std::fmt;
use std::path::{Path, PathBuf};

/// A trace file that could not be read. `Display` is one line, `<path>: <what is wrong>`,
/// e.g. `h.json.gz: not a Kineto trace: no "traceEvents" array` or
/// `x.json: invalid JSON at line 3 column 5: expected value`.
#[derive(Debug)]
pub struct ReadError {
    /// The file, as the caller named it.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: ReadErrorKind,
}

/// What is wrong with a trace file (see [`ReadError`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadErrorKind {
    /// The file could not be opened or read (not found, permission, I/O error).
    Io(std::io::Error),
    /// The file is empty.
    Empty,
    /// The file starts with the gzip magic bytes but does not decompress.
    Gzip(String),
    /// The (decompressed) content is not valid JSON.
    Json {
        /// 1-based line of the error in the (decompressed) text.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's description, without its position suffix.
        msg: String,
    },
    /// Valid JSON, but not a Chrome / Kineto trace (no `traceEvents` array, wrong types).
    NotKineto(String),
    /// A directory given as a capture holds no trace file (`*.json`, `*.json.gz`).
    NoTraceInDir,
    /// One event of `traceEvents` is unusable (e.g. an `X` event without a numeric `ts`).
    BadEvent {
        /// 0-based index of the event in `traceEvents`.
        index: usize,
        /// What is wrong with it.
        msg: String,
    },
}

impl ReadError {
    pub(crate) fn new(path: &Path, kind: ReadErrorKind) -> Self {
        ReadError {
            path: path.to_path_buf(),
            kind,
        }
    }
}

impl fmt::Display for ReadErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadErrorKind::Io(e) => write!(f, "cannot read: {e}"),
            ReadErrorKind::Empty => write!(f, "empty file"),
            ReadErrorKind::Gzip(m) => write!(f, "gzip stream corrupt: {m}"),
            ReadErrorKind::Json { line, column, msg } => {
                write!(f, "invalid JSON at line {line} column {column}: {msg}")
            }
            ReadErrorKind::NotKineto(m) => write!(f, "not a Kineto trace: {m}"),
            ReadErrorKind::NoTraceInDir => write!(f, "directory holds no trace file (*.json, *.json.gz)"),
            ReadErrorKind::BadEvent { index, msg } => write!(f, "event {index}: {msg}"),
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.kind)
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ReadErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}
