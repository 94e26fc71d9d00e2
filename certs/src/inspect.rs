//! Reading facts out of certificates for operators: subject, names and validity.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::CertError;

/// What an operator wants to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject distinguished name.
    pub subject: String,
    /// Unix seconds of `notAfter`.
    pub not_after: i64,
    /// Whether the certificate is a CA (basicConstraints cA).
    pub is_ca: bool,
}

/// Summarises the first certificate in `pem`.
pub fn summarize_pem(pem: &[u8]) -> Result<CertSummary, CertError> {
    let der = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or(CertError::NoCertificate)?
        .map_err(CertError::Pem)?;
    summarize_der(der.as_ref())
}

/// Summarises one DER certificate.
pub fn summarize_der(der: &[u8]) -> Result<CertSummary, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CertError::NoCertificate)?;
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_pki_summarises() {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
        let ca = summarize_pem(&std::fs::read(&paths.ca_cert).unwrap()).unwrap();
        assert!(ca.is_ca);
        let server = summarize_pem(&std::fs::read(&paths.server_cert).unwrap()).unwrap();
        assert!(!server.is_ca);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(server.not_after > now + 300 * 86400, "about 397 days");
        assert!(summarize_pem(b"not pem").is_err());
    }
}
