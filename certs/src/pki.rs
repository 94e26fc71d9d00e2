//! The local CA and the server certificate on disk: created when missing, re-issued when stale.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::{info, warn};

use crate::files::{ensure_private_dir, write_public_file, write_secret_file};
use crate::install::{clear_installed, installed_pair_usable};
use crate::tls::{parse_certs, parse_key, provider};
use crate::CertError;

/// The local CA outlives many server certificates so clients rarely need a new trust anchor.
const CA_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// Just under 398 days, the leaf lifetime some TLS clients cap certificates at.
const SERVER_LIFETIME: Duration = Duration::from_secs(397 * 24 * 60 * 60);
/// A server certificate closer than this to expiry is replaced at the next start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Back-dating tolerates peers whose clocks run a little behind ours.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// Where the CA and server certificate and their keys live (PEM files inside `dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// The private directory (0700) holding all four files.
    pub dir: PathBuf,
    /// The CA certificate, `ca.pem`: what clients and edges trust.
    pub ca_cert: PathBuf,
    /// The CA private key, `ca-key.pem` (0600).
    pub ca_key: PathBuf,
    /// The server certificate, `server.pem` (leaf only; clients hold the CA).
    pub server_cert: PathBuf,
    /// The server private key, `server-key.pem` (0600).
    pub server_key: PathBuf,
}

impl PkiPaths {
    /// The file layout inside `dir`; touches nothing on disk.
    pub fn in_dir(dir: &Path) -> Self {
        PkiPaths {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        }
    }
}

/// Loads the CA and server certificate from `dir`, creating what is missing.
///
/// A missing CA (both files absent) is created: ECDSA P-256, 10 years. The server certificate
/// (ECDSA P-256, SANs = `names`, IP addresses as IP SANs, serverAuth + clientAuth, 397 days) is
/// issued again when it is missing, unreadable, does not match its key, does not chain to the CA,
/// does not cover every name in `names`, or expires within 30 days. Keys are written 0600
/// atomically and the directory is made 0700. A CA with only one of its two files is an error,
/// never silently replaced, since clients may trust it.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<PkiPaths, CertError> {
    let names = dedup(names);
    let server_names = names
        .iter()
        .map(|n| ServerName::try_from(n.as_str()).map_err(|_| CertError::InvalidName(n.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = names.first() else {
        return Err(CertError::NoNames);
    };
    ensure_private_dir(dir).map_err(CertError::io(dir))?;
    let paths = PkiPaths::in_dir(dir);

    let (ca_der, issuer) = load_or_create_ca(&paths, first)?;
    if let Err(reason) = check_server_cert(&paths, &ca_der, &server_names, SystemTime::now()) {
        // An operator's certificate is never replaced behind their back: it is kept (with a
        // warning when it is unfit), and only `certs regenerate` or a new install replaces it.
        match installed_pair_usable(&paths) {
            Some(Ok(leaf)) => {
                warn!(path = %paths.server_cert.display(), subject = %leaf.subject, %reason,
                    "keeping the installed server certificate; install a new one or run `sipreg certs regenerate` to use the local CA");
                return Ok(paths);
            }
            Some(Err(why)) => {
                return Err(CertError::Inconsistent {
                    path: paths.server_cert.clone(),
                    reason: format!("the installed server certificate cannot be used ({why}); install a matching pair, or delete server.pem and server-key.pem to have the local CA issue one"),
                })
            }
            None => {}
        }
        info!(path = %paths.server_cert.display(), %reason, "issuing server certificate");
        issue_server_cert(&paths, &issuer, &names, SERVER_LIFETIME)?;
    }
    Ok(paths)
}

/// Issues a fresh server certificate (new key) from the local CA for `names`, replacing the old
/// files atomically; the caller swaps it into the live TLS configs.
pub fn regenerate_server_cert(dir: &Path, names: &[String]) -> Result<PkiPaths, CertError> {
    let names = dedup(names);
    let Some(first) = names.first() else {
        return Err(CertError::NoNames);
    };
    let paths = PkiPaths::in_dir(dir);
    let (_, issuer) = load_or_create_ca(&paths, first)?;
    info!(path = %paths.server_cert.display(), "regenerating server certificate on request");
    issue_server_cert(&paths, &issuer, &names, SERVER_LIFETIME)?;
    clear_installed(&paths);
    Ok(paths)
}

fn dedup(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
            out.push(n.clone());
        }
    }
    out
}

/// Reads a file, mapping "not there" to `None`.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CertError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CertError::io(path)(e)),
    }
}

fn load_or_create_ca(
    paths: &PkiPaths,
    host: &str,
) -> Result<(CertificateDer<'static>, Issuer<'static, KeyPair>), CertError> {
    match (
        read_optional(&paths.ca_cert)?,
        read_optional(&paths.ca_key)?,
    ) {
        (None, None) => create_ca(paths, host),
        (Some(cert_pem), Some(key_pem)) => load_ca(paths, &cert_pem, &key_pem),
        (Some(_), None) => Err(inconsistent(
            &paths.ca_key,
            "CA key missing while ca.pem exists",
        )),
        (None, Some(_)) => Err(inconsistent(
            &paths.ca_cert,
            "CA certificate missing while its key exists",
        )),
    }
}

fn inconsistent(path: &Path, what: &str) -> CertError {
    CertError::Inconsistent {
        path: path.to_path_buf(),
        reason: format!("{what}; restore it, or delete both CA files to create a new CA (clients must then trust the new ca.pem)"),
    }
}

fn create_ca(
    paths: &PkiPaths,
    host: &str,
) -> Result<(CertificateDer<'static>, Issuer<'static, KeyPair>), CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sipreg");
    // A per-CA suffix keeps two installs on the same host from issuing under the same name, which
    // would turn "unknown CA" into a confusing signature error for clients trusting the other one.
    let id: String = params
        .key_identifier(&key)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    dn.push(
        DnType::CommonName,
        format!("{} {id} ({host})", crate::install::LOCAL_CA_PREFIX),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_LIFETIME).into();
    let cert = params.self_signed(&key)?;

    write_secret_file(&paths.ca_key, key.serialize_pem().as_bytes())
        .map_err(CertError::io(&paths.ca_key))?;
    write_public_file(&paths.ca_cert, cert.pem().as_bytes())
        .map_err(CertError::io(&paths.ca_cert))?;
    info!(path = %paths.ca_cert.display(), "created local CA");
    Ok((cert.der().clone(), Issuer::new(params, key)))
}

fn load_ca(
    paths: &PkiPaths,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(CertificateDer<'static>, Issuer<'static, KeyPair>), CertError> {
    let bad = |path: &Path, e: &dyn std::fmt::Display| CertError::Inconsistent {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut certs = parse_certs(cert_pem).map_err(|e| bad(&paths.ca_cert, &e))?;
    let ca_der = certs.swap_remove(0);
    let key_der = parse_key(key_pem).map_err(|e| bad(&paths.ca_key, &e))?;
    // Signing with a key that is not the CA's would produce certificates nobody can verify.
    CertifiedKey::from_der(vec![ca_der.clone()], key_der, &provider())
        .map_err(|e| bad(&paths.ca_key, &format!("does not match ca.pem: {e}")))?;
    let key_text = std::str::from_utf8(key_pem).map_err(|e| bad(&paths.ca_key, &e))?;
    let key = KeyPair::from_pem(key_text).map_err(|e| bad(&paths.ca_key, &e))?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| bad(&paths.ca_cert, &e))?;
    Ok((ca_der, issuer))
}

/// Why the server certificate on disk cannot stay, or `Ok` if it can.
fn check_server_cert(
    paths: &PkiPaths,
    ca_der: &CertificateDer<'_>,
    names: &[ServerName<'_>],
    now: SystemTime,
) -> Result<(), String> {
    let cert_pem =
        fs::read(&paths.server_cert).map_err(|e| format!("cannot read certificate: {e}"))?;
    let key_pem = fs::read(&paths.server_key).map_err(|e| format!("cannot read key: {e}"))?;
    let chain = parse_certs(&cert_pem).map_err(|e| format!("certificate: {e}"))?;
    let key = parse_key(&key_pem).map_err(|e| format!("key: {e}"))?;
    let leaf = chain[0].clone();
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| format!("key: {e}"))?;

    let anchor = webpki::anchor_from_trusted_cert(ca_der).map_err(|e| format!("CA: {e}"))?;
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("certificate: {e}"))?;
    // Verifying at now + 30 days checks chain, signature and usage, and the renewal margin at once.
    let since_epoch = (now + RENEW_BEFORE)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| format!("not valid for 30 more days under the CA: {e}"))?;
    for name in names {
        ee.verify_is_valid_for_subject_name(name)
            .map_err(|_| format!("does not cover {}", name.to_str()))?;
    }
    Ok(())
}

fn issue_server_cert(
    paths: &PkiPaths,
    issuer: &Issuer<'_, KeyPair>,
    names: &[String],
    lifetime: Duration,
) -> Result<(), CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    // `new` turns names that parse as IP addresses into IP SANs, the rest into DNS SANs.
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sipreg");
    if let Some(first) = names.first() {
        dn.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // clientAuth too: the same identity is presented when the node dials mTLS peers.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
    let cert = params.signed_by(&key, issuer)?;

    // Key first: a crash in between leaves a mismatched pair, which the next start re-issues.
    write_secret_file(&paths.server_key, key.serialize_pem().as_bytes())
        .map_err(CertError::io(&paths.server_key))?;
    write_public_file(&paths.server_cert, cert.pem().as_bytes())
        .map_err(CertError::io(&paths.server_cert))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn std_names() -> Vec<String> {
        names(&["node1.example", "localhost", "127.0.0.1", "::1"])
    }

    fn server_names(v: &[String]) -> Vec<ServerName<'static>> {
        v.iter()
            .map(|n| ServerName::try_from(n.clone()).unwrap())
            .collect()
    }

    fn ca_der(p: &PkiPaths) -> CertificateDer<'static> {
        parse_certs(&fs::read(&p.ca_cert).unwrap())
            .unwrap()
            .remove(0)
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_all_files_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let p = load_or_create(&dir, &std_names()).unwrap();
        assert_eq!(p, PkiPaths::in_dir(&dir));
        for f in [&p.ca_cert, &p.ca_key, &p.server_cert, &p.server_key] {
            assert!(f.is_file(), "{}", f.display());
        }
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&p.ca_key), 0o600);
            assert_eq!(mode(&p.server_key), 0o600);
        }
    }

    #[test]
    fn server_cert_chains_to_ca_and_covers_every_name() {
        let tmp = tempfile::tempdir().unwrap();
        let p = load_or_create(tmp.path(), &std_names()).unwrap();
        let ca = ca_der(&p);
        check_server_cert(&p, &ca, &server_names(&std_names()), SystemTime::now()).unwrap();
        // Client-side usage too (mTLS towards peers).
        let leaf = parse_certs(&fs::read(&p.server_cert).unwrap())
            .unwrap()
            .remove(0);
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let t = UnixTime::since_unix_epoch(SystemTime::now().duration_since(UNIX_EPOCH).unwrap());
        let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            t,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
        // A name that was not requested is not covered.
        assert!(ee
            .verify_is_valid_for_subject_name(&ServerName::try_from("evil.example").unwrap())
            .is_err());
        // Validity about 397 days: still fine in 360 days, gone in 400.
        let at = |d: u64| SystemTime::now() + DAY * d as u32 - RENEW_BEFORE;
        assert!(check_server_cert(&p, &ca, &[], at(360)).is_ok());
        assert!(check_server_cert(&p, &ca, &[], at(400)).is_err());
    }

    #[test]
    fn second_call_keeps_ca_and_server_cert() {
        let tmp = tempfile::tempdir().unwrap();
        let p = load_or_create(tmp.path(), &std_names()).unwrap();
        let before: Vec<_> = [&p.ca_cert, &p.ca_key, &p.server_cert, &p.server_key]
            .iter()
            .map(|f| fs::read(f).unwrap())
            .collect();
        let p2 = load_or_create(tmp.path(), &std_names()).unwrap();
        let after: Vec<_> = [&p2.ca_cert, &p2.ca_key, &p2.server_cert, &p2.server_key]
            .iter()
            .map(|f| fs::read(f).unwrap())
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn new_name_reissues_server_cert_under_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let p = load_or_create(tmp.path(), &std_names()).unwrap();
        let ca_before = fs::read(&p.ca_cert).unwrap();
        let cert_before = fs::read(&p.server_cert).unwrap();
        let mut more = std_names();
        more.push("10.1.2.3".into());
        load_or_create(tmp.path(), &more).unwrap();
        assert_eq!(fs::read(&p.ca_cert).unwrap(), ca_before);
        assert_ne!(fs::read(&p.server_cert).unwrap(), cert_before);
        check_server_cert(&p, &ca_der(&p), &server_names(&more), SystemTime::now()).unwrap();
        // A subset of the names needs no new certificate.
        let cert_mid = fs::read(&p.server_cert).unwrap();
        load_or_create(tmp.path(), &names(&["localhost"])).unwrap();
        assert_eq!(fs::read(&p.server_cert).unwrap(), cert_mid);
    }

    #[test]
    fn near_expiry_reissues() {
        let tmp = tempfile::tempdir().unwrap();
        let p = load_or_create(tmp.path(), &std_names()).unwrap();
        let (_, issuer) = load_or_create_ca(&p, "x").unwrap();
        issue_server_cert(&p, &issuer, &std_names(), DAY * 10).unwrap();
        let short = fs::read(&p.server_cert).unwrap();
        assert!(check_server_cert(&p, &ca_der(&p), &[], SystemTime::now()).is_err());
        load_or_create(tmp.path(), &std_names()).unwrap();
        assert_ne!(fs::read(&p.server_cert).unwrap(), short);
        check_server_cert(
            &p,
            &ca_der(&p),
            &server_names(&std_names()),
            SystemTime::now(),
        )
        .unwrap();
    }

    #[test]
    fn mismatched_or_foreign_server_files_are_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let p = load_or_create(tmp.path(), &std_names()).unwrap();
        // Key from another PKI: the pair no longer matches.
        let other = tempfile::tempdir().unwrap();
        let o = load_or_create(other.path(), &std_names()).unwrap();
        fs::copy(&o.server_key, &p.server_key).unwrap();
        load_or_create(tmp.path(), &std_names()).unwrap();
        check_server_cert(
            &p,
            &ca_der(&p),
            &server_names(&std_names()),
            SystemTime::now(),
        )
        .unwrap();
        // A whole pair from another CA: matches itself but does not chain.
        fs::copy(&o.server_key, &p.server_key).unwrap();
        fs::copy(&o.server_cert, &p.server_cert).unwrap();
        assert!(check_server_cert(&p, &ca_der(&p), &[], SystemTime::now()).is_err());
        load_or_create(tmp.path(), &std_names()).unwrap();
        check_server_cert(
            &p,
            &ca_der(&p),
            &server_names(&std_names()),
            SystemTime::now(),
        )
        .unwrap();
        // Garbage in the certificate file.
        fs::write(&p.server_cert, b"garbage").unwrap();
        load_or_create(tmp.path(), &std_names()).unwrap();
        check_server_cert(
            &p,
            &ca_der(&p),
            &server_names(&std_names()),
            SystemTime::now(),
        )
        .unwrap();
    }

    #[test]
    fn half_a_ca_is_an_error_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let p = load_or_create(tmp.path(), &std_names()).unwrap();
        fs::remove_file(&p.ca_key).unwrap();
        let err = load_or_create(tmp.path(), &std_names()).unwrap_err();
        assert!(
            matches!(err, CertError::Inconsistent { ref path, .. } if *path == p.ca_key),
            "{err}"
        );
        assert!(p.ca_cert.is_file());
    }

    #[test]
    fn wrong_ca_key_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let p = load_or_create(tmp.path(), &std_names()).unwrap();
        let other = tempfile::tempdir().unwrap();
        let o = load_or_create(other.path(), &std_names()).unwrap();
        fs::copy(&o.ca_key, &p.ca_key).unwrap();
        let err = load_or_create(tmp.path(), &std_names()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn bad_names_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_or_create(tmp.path(), &[]),
            Err(CertError::NoNames)
        ));
        assert!(matches!(
            load_or_create(tmp.path(), &names(&["bad name!"])),
            Err(CertError::InvalidName(n)) if n == "bad name!"
        ));
    }
}
