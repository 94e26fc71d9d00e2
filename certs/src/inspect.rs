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
    /// The issuer distinguished name.
    pub issuer: String,
    /// Unix seconds of `notBefore`.
    pub not_before: i64,
    /// DNS and IP subject alternative names.
    pub sans: Vec<String>,
    /// Hex SHA-256 of the DER.
    pub sha256: String,
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
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => sans.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        sans.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        sans,
        sha256: sha256_hex(der),
    })
}

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
        assert!(
            server.sans.contains(&"localhost".to_string()),
            "{:?}",
            server.sans
        );
        assert_eq!(server.sha256.len(), 64);
        let again = crate::regenerate_server_cert(dir.path(), &["localhost".to_string()]).unwrap();
        let renewed = summarize_pem(&std::fs::read(&again.server_cert).unwrap()).unwrap();
        assert_ne!(renewed.sha256, server.sha256, "a new certificate");
        assert_eq!(renewed.issuer, server.issuer, "from the same CA");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(server.not_after > now + 300 * 86400, "about 397 days");
        assert!(summarize_pem(b"not pem").is_err());
    }
}
