//! A throw-away PKI for the tests: a CA made with rcgen and the identities it signs (edge
//! proxies' client certificates, an operator's trust anchor).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PKCS_ECDSA_P256_SHA256,
};

/// One day, the unit of the validity periods below.
pub const DAY: Duration = Duration::from_secs(86_400);

/// A self-signed test CA (ECDSA P-256).
pub struct TestCa {
    /// The CA certificate, PEM.
    pub pem: String,
    /// What signs the certificates it issues.
    pub issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A CA named `name` with rcgen's default validity.
    pub fn new(name: &str) -> TestCa {
        Self::from_params(name, CertificateParams::default())
    }

    /// A CA named `name`, valid from a day ago until `days` days from now (short-lived anchors
    /// exercise the expiry warnings).
    pub fn expiring(name: &str, days: u32) -> TestCa {
        let mut p = CertificateParams::default();
        p.not_before = (SystemTime::now() - DAY).into();
        p.not_after = (SystemTime::now() + DAY * days).into();
        Self::from_params(name, p)
    }

    fn from_params(name: &str, mut p: CertificateParams) -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// An identity (certificate PEM, key PEM) with this CN, these SANs and key usages.
    pub fn identity(
        &self,
        cn: &str,
        sans: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = usages.to_vec();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
