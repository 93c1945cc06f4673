//! What can go wrong in the PKI, one enum for every operation.

use std::path::PathBuf;

/// Errors of the PKI operations.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} already exists; refusing to overwrite it (move it away first if you mean to replace it)"
    )]
    Exists(PathBuf),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid name {name:?} for a certificate: {reason}")]
    BadName { name: String, reason: String },
    #[error("not a certificate: {0}")]
    BadCertificate(String),
    #[error("certificate signing request refused: {0}")]
    BadRequest(String),
    #[error(
        "{0}: no CA here (neither issuing.crt/issuing.key nor ca.crt/ca.key); run `phonehome-ingest ca init --dir` first"
    )]
    NoCa(PathBuf),
}

#[cfg(feature = "ca")]
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}
