//! The one error type of the crate; every failure names the file or input it concerns.

use std::path::PathBuf;

/// Why keys, certificates or a TLS config could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The files on disk contradict each other (e.g. a CA certificate without its key).
    #[error("{path}: {reason}")]
    Inconsistent {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// No certificate names were given.
    #[error("no certificate names given")]
    NoNames,
    /// A certificate name is neither a DNS name nor an IP address.
    #[error("invalid certificate name {0:?}: expected a DNS name or an IP address")]
    InvalidName(String),
    /// The PEM input held no certificate.
    #[error("no certificate found in PEM input")]
    NoCertificate,
    /// PEM input could not be parsed, or held no private key.
    #[error("pem: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// A certificate or key could not be generated or parsed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate offered for installation was refused; the text says what to fix.
    #[error("{reason}")]
    Rejected {
        /// The input at fault: `certificate`, `key` or `chain`.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// rustls refused the configuration (e.g. key does not match certificate).
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (e.g. empty trust store).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl CertError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
        move |source| CertError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
