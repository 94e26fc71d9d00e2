//! Installing an operator's server certificate (one not issued by the local CA): every check runs
//! before anything is written, so a refused pair leaves the files on disk as they were.

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::files::{write_public_file, write_secret_file};
use crate::inspect::summarize_der;
use crate::pki::PkiPaths;
use crate::tls::{parse_certs, parse_key, provider};
use crate::{CertError, CertSummary};

/// The issuer CN prefix of every local CA (see `pki::create_ca`); how a server certificate from
/// any sipreg's own CA is told apart from an installed one.
pub(crate) const LOCAL_CA_PREFIX: &str = "sipreg local CA";

/// A server certificate and key that passed every check, ready to be written and served.
#[derive(Debug, Clone)]
pub struct CheckedPair {
    /// Leaf then intermediates, PEM (self-signed roots are left out: clients hold those).
    pub chain_pem: Vec<u8>,
    /// The private key, PEM as given.
    pub key_pem: Vec<u8>,
    /// The root CA the chain verified to, PEM (written as `server-ca.pem` for local clients).
    pub root_pem: Vec<u8>,
    /// The leaf certificate.
    pub leaf: CertSummary,
}

/// Checks a server certificate (`cert_pem`: the leaf first, optionally followed by its chain),
/// its key and an optional extra chain file.
///
/// Refused (as [`CertError::Rejected`], saying what to fix) when the key does not match the leaf,
/// the leaf is a CA, expired or not yet valid at `now`, or the chain does not verify for server
/// use up to a root: a self-signed certificate among those given, or one of `anchors_pem` (the
/// local CA, the trust store).
pub fn check_server_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    chain_pem: Option<&[u8]>,
    anchors_pem: &[&[u8]],
    now: SystemTime,
) -> Result<CheckedPair, CertError> {
    let rejected =
        |field: &'static str| move |reason: String| CertError::Rejected { field, reason };
    let mut given = parse_certs(cert_pem).map_err(|e| {
        rejected("certificate")(format!("the certificate file holds no certificate ({e})"))
    })?;
    if let Some(chain) = chain_pem {
        given.extend(parse_certs(chain).map_err(|e| {
            rejected("chain")(format!("the chain file holds no certificate ({e})"))
        })?);
    }
    let leaf = given.remove(0);
    let key = parse_key(key_pem).map_err(|e| {
        rejected("key")(format!(
            "the key file holds no private key ({e}); give the PEM key of the certificate"
        ))
    })?;
    CertifiedKey::from_der(vec![leaf.clone()], key, &provider()).map_err(|e| {
        rejected("key")(format!(
            "the key does not match the certificate ({e}); give the key the certificate was issued for"
        ))
    })?;
    let summary = summarize_der(leaf.as_ref())
        .map_err(|_| rejected("certificate")("the certificate is not readable X.509".into()))?;
    if summary.is_ca {
        return Err(rejected("certificate")(
            "the certificate is a CA certificate; give the server (leaf) certificate first".into(),
        ));
    }
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if summary.not_after <= now_secs {
        return Err(rejected("certificate")(format!(
            "the certificate expired at {}; get a new one issued",
            http_date(summary.not_after)
        )));
    }
    if summary.not_before > now_secs {
        return Err(rejected("certificate")(format!(
            "the certificate is not valid before {}; check the clock or wait",
            http_date(summary.not_before)
        )));
    }

    // Self-signed certificates given with the leaf are roots; the rest are intermediates.
    let (roots, intermediates): (Vec<_>, Vec<_>) =
        given.into_iter().partition(|c| is_self_signed(c));
    let mut anchor_ders = roots;
    for pem in anchors_pem {
        // A trust store entry that does not parse must not block an install it is not needed for.
        if let Ok(certs) = parse_certs(pem) {
            anchor_ders.extend(certs);
        }
    }
    let anchors: Vec<_> = anchor_ders
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| rejected("certificate")(format!("the certificate is not usable: {e}")))?;
    let at = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let path = ee
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            at,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rejected("chain")(format!(
                "the certificate chain does not verify ({e:?}); pass the intermediate and root CA \
             certificates with --chain (or add the root with `sipreg trust add`)"
            ))
        })?;

    // The root the chain ended at, for clients of this host (the CLI) to trust.
    let subject = path.anchor().subject.as_ref();
    let root_pem = anchor_ders
        .iter()
        .find(|c| webpki::anchor_from_trusted_cert(c).is_ok_and(|a| a.subject.as_ref() == subject))
        .map(|c| pem_of(c))
        .unwrap_or_default();
    let mut chain_pem = pem_of(&leaf);
    for c in &intermediates {
        chain_pem.extend_from_slice(&pem_of(c));
    }
    Ok(CheckedPair {
        root_pem,
        chain_pem,
        key_pem: key_pem.to_vec(),
        leaf: summary,
    })
}

/// Writes a checked pair as the server certificate and key in `dir` (key first, both atomic)
/// and records it as installed, so [`crate::load_or_create`] never replaces it with one from the
/// local CA.
pub fn install_server_cert(dir: &Path, pair: &CheckedPair) -> Result<PkiPaths, CertError> {
    let paths = PkiPaths::in_dir(dir);
    write_secret_file(&paths.server_key, &pair.key_pem)
        .map_err(CertError::io(&paths.server_key))?;
    write_public_file(&paths.server_cert, &pair.chain_pem)
        .map_err(CertError::io(&paths.server_cert))?;
    let root = server_ca_file(&paths);
    write_public_file(&root, &pair.root_pem).map_err(CertError::io(&root))?;
    mark_installed(&paths, &pair.leaf.sha256)?;
    Ok(paths)
}

/// Records `sha256` as the installed leaf (`server.installed`).
pub(crate) fn mark_installed(paths: &PkiPaths, sha256: &str) -> Result<(), CertError> {
    let marker = installed_marker(paths);
    write_public_file(&marker, format!("{sha256}\n").as_bytes()).map_err(CertError::io(&marker))
}

/// Removes the installed marker (a certificate from the local CA replaces an installed one).
pub(crate) fn clear_installed(paths: &PkiPaths) {
    let _ = fs::remove_file(installed_marker(paths));
    let _ = fs::remove_file(server_ca_file(paths));
}

/// `server-ca.pem`: the root an installed server certificate chains to. Local clients (the CLI)
/// trust it next to `ca.pem`; absent while the local CA issues the server certificate.
pub fn server_ca_file(paths: &PkiPaths) -> std::path::PathBuf {
    paths.dir.join("server-ca.pem")
}

fn installed_marker(paths: &PkiPaths) -> std::path::PathBuf {
    paths.dir.join("server.installed")
}

/// Whether the server certificate in `dir` was installed by an operator rather than issued by a
/// sipreg local CA: the installed marker names it, or its issuer is not a sipreg local CA (files
/// copied in by hand while the server was stopped).
pub fn server_cert_is_installed(dir: &Path) -> bool {
    let paths = PkiPaths::in_dir(dir);
    let Ok(pem) = fs::read(&paths.server_cert) else {
        return false;
    };
    let Ok(leaf) = crate::summarize_pem(&pem) else {
        return false;
    };
    let marked = fs::read_to_string(installed_marker(&paths))
        .map(|m| m.trim() == leaf.sha256)
        .unwrap_or(false);
    marked || !issuer_is_local_ca(&leaf.issuer)
}

fn issuer_is_local_ca(issuer: &str) -> bool {
    issuer
        .split(',')
        .filter_map(|rdn| rdn.trim().strip_prefix("CN="))
        .any(|cn| cn.starts_with(LOCAL_CA_PREFIX))
}

/// Whether the pair in `paths` is an installed certificate that still matches its key, for
/// `load_or_create` to keep it; `Err` says why it cannot be used.
pub(crate) fn installed_pair_usable(paths: &PkiPaths) -> Option<Result<CertSummary, String>> {
    if !server_cert_is_installed(&paths.dir) {
        return None;
    }
    let check = || {
        let cert_pem = fs::read(&paths.server_cert).map_err(|e| e.to_string())?;
        let key_pem = fs::read(&paths.server_key).map_err(|e| e.to_string())?;
        let chain = parse_certs(&cert_pem).map_err(|e| e.to_string())?;
        let key = parse_key(&key_pem).map_err(|e| e.to_string())?;
        let leaf = chain[0].clone();
        CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| format!("the key does not match the certificate: {e}"))?;
        summarize_der(leaf.as_ref()).map_err(|e| e.to_string())
    };
    Some(check())
}

fn is_self_signed(der: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
        .unwrap_or(false)
}

fn pem_of(der: &CertificateDer<'_>) -> Vec<u8> {
    let b64 = base64_encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out.into_bytes()
}

/// Standard base64 with padding (the crate has no base64 dependency for this one use).
fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn http_date(secs: i64) -> String {
    // RFC 3339-ish UTC without a date crate: days since epoch to a civil date.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, PKCS_ECDSA_P256_SHA256,
    };
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str, parent: Option<&Ca>) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = match parent {
            Some(parent) => p.signed_by(&key, &parent.issuer).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(ca: &Ca, from_now: i64, days: u32) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "installed.test");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let start = if from_now >= 0 {
            SystemTime::now() + DAY * from_now as u32
        } else {
            SystemTime::now() - DAY * (-from_now) as u32
        };
        p.not_before = start.into();
        p.not_after = (start + DAY * days).into();
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn err(r: Result<CheckedPair, CertError>) -> String {
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_pair_with_its_chain_is_accepted_and_roots_are_left_out() {
        let root = ca("Root", None);
        let mid = ca("Intermediate", Some(&root));
        let (cert, key) = leaf(&mid, -1, 90);
        let chain = format!("{}{}", mid.pem, root.pem);
        let now = SystemTime::now();
        let ok = check_server_pair(
            cert.as_bytes(),
            key.as_bytes(),
            Some(chain.as_bytes()),
            &[],
            now,
        )
        .unwrap();
        assert_eq!(
            parse_certs(&ok.chain_pem).unwrap().len(),
            2,
            "leaf + intermediate"
        );
        assert_eq!(ok.leaf.sans, vec!["localhost".to_string()]);
        // The root may come from the anchors instead (local CA or trust store).
        let ok = check_server_pair(
            format!("{cert}{}", mid.pem).as_bytes(),
            key.as_bytes(),
            None,
            &[root.pem.as_bytes()],
            now,
        );
        assert!(ok.is_ok());
        // Without the intermediate the chain does not verify.
        let e = err(check_server_pair(
            cert.as_bytes(),
            key.as_bytes(),
            Some(root.pem.as_bytes()),
            &[],
            now,
        ));
        assert!(
            e.contains("chain does not verify") && e.contains("--chain"),
            "{e}"
        );
    }

    #[test]
    fn mismatched_expired_and_future_pairs_are_refused() {
        let root = ca("Root", None);
        let (cert, _) = leaf(&root, -1, 90);
        let (_, other_key) = leaf(&root, -1, 90);
        let now = SystemTime::now();
        let anchors: &[&[u8]] = &[root.pem.as_bytes()];
        let e = err(check_server_pair(
            cert.as_bytes(),
            other_key.as_bytes(),
            None,
            anchors,
            now,
        ));
        assert!(e.contains("key does not match"), "{e}");
        let (old, old_key) = leaf(&root, -30, 10);
        let e = err(check_server_pair(
            old.as_bytes(),
            old_key.as_bytes(),
            None,
            anchors,
            now,
        ));
        assert!(e.contains("expired"), "{e}");
        let (future, future_key) = leaf(&root, 5, 10);
        let e = err(check_server_pair(
            future.as_bytes(),
            future_key.as_bytes(),
            None,
            anchors,
            now,
        ));
        assert!(e.contains("not valid before"), "{e}");
        let e = err(check_server_pair(
            root.pem.as_bytes(),
            b"",
            None,
            anchors,
            now,
        ));
        assert!(e.contains("private key"), "{e}");
        let e = err(check_server_pair(b"junk", b"", None, anchors, now));
        assert!(e.contains("no certificate"), "{e}");
    }

    #[test]
    fn installed_certificates_survive_load_or_create() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let local = crate::load_or_create(dir.path(), &names).unwrap();
        assert!(!server_cert_is_installed(dir.path()));
        let root = ca("Operator Root", None);
        let (cert, key) = leaf(&root, -1, 20);
        let pair = check_server_pair(
            cert.as_bytes(),
            key.as_bytes(),
            Some(root.pem.as_bytes()),
            &[],
            SystemTime::now(),
        )
        .unwrap();
        install_server_cert(dir.path(), &pair).unwrap();
        assert!(server_cert_is_installed(dir.path()));
        let root_file = server_ca_file(&PkiPaths::in_dir(dir.path()));
        assert_eq!(
            parse_certs(&fs::read(&root_file).unwrap()).unwrap(),
            parse_certs(root.pem.as_bytes()).unwrap()
        );
        // Neither from the local CA nor 30 days from expiry stops it from being kept.
        crate::load_or_create(dir.path(), &names).unwrap();
        let now = crate::summarize_pem(&fs::read(&local.server_cert).unwrap()).unwrap();
        assert_eq!(now.sha256, pair.leaf.sha256);
        // Regenerating from the local CA replaces it, and it is no longer marked installed.
        crate::regenerate_server_cert(dir.path(), &names).unwrap();
        assert!(!server_cert_is_installed(dir.path()));
        assert!(!root_file.exists());
    }

    #[test]
    fn dates_read_well() {
        assert_eq!(http_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(http_date(1_709_251_199), "2024-02-29 23:59:59 UTC");
    }
}
