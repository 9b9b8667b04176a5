//! The library's error type. Every variant carries a message that says what went wrong and,
//! where there is one, how to fix it; the CLI prints it on one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing, unknown or out of range.
    #[error("{0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    /// A buffer handed to the library has the wrong size.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// NaN or infinity in a loss, gradient or parameter.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// A backend failed (device, kernel, thread pool).
    #[error("backend: {0}")]
    Backend(String),
    /// Something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// An environment failed.
    #[error("environment: {0}")]
    Env(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause: source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
