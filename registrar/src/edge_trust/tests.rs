use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PKCS_ECDSA_P256_SHA256,
};

#[test]
fn dns_names_compare_case_insensitively_without_trailing_dot() {
    assert!(name_matches("expc.example.com", "EXPC.Example.COM"));
    assert!(name_matches("expc.example.com.", "expc.example.com"));
    assert!(name_matches(" expc.example.com ", "expc.example.com."));
    assert!(!name_matches("expc.example.com", "expc2.example.com"));
    assert!(!name_matches("expc.example.com", "expc.example.com.evil"));
    assert!(!name_matches("", ""));
    assert!(!name_matches("expc", ""));
}

#[test]
fn a_registered_wildcard_matches_exactly_one_leftmost_label() {
    assert!(name_matches("*.example.com", "a.example.com"));
    assert!(name_matches("*.Example.com", "A.EXAMPLE.com"));
    assert!(!name_matches("*.example.com", "example.com"));
    assert!(!name_matches("*.example.com", "a.b.example.com"));
    assert!(!name_matches("*.example.com", ".example.com"));
    assert!(!name_matches("*.example.com", "a.example.org"));
    // Only the whole leftmost label is a wildcard; elsewhere `*` is literal.
    assert!(!name_matches("a*.example.com", "ab.example.com"));
    assert!(!name_matches("a.*.com", "a.example.com"));
    assert!(!name_matches("*", "anything"));
    // A presented name is never a pattern.
    assert!(!name_matches("a.example.com", "*.example.com"));
    assert!(name_matches("*.example.com", "*.EXAMPLE.com"));
    assert!(!name_matches("*.example.com", "*.a.example.com"));
}

#[test]
fn ip_addresses_compare_as_addresses_never_as_names() {
    assert!(name_matches("192.0.2.7", "192.0.2.7"));
    assert!(name_matches("::1", "0:0:0:0:0:0:0:1"));
    assert!(name_matches("[2001:db8::1]", "2001:db8::1"));
    assert!(!name_matches("192.0.2.7", "192.0.2.8"));
    assert!(!name_matches("*.2.7", "192.0.2.7"));
    assert!(!name_matches("192.0.2.7", "192.0.2.7.example.com"));
}

fn edge(host: &str, names: &[&str]) -> Edge {
    Edge {
        host: host.into(),
        description: String::new(),
        subject_names: names.iter().map(|s| s.to_string()).collect(),
        updated_at: 0,
    }
}

#[test]
fn any_presented_name_may_match_any_edge_and_hosts_stand_in_for_empty_lists() {
    let edges = vec![
        edge("10.0.0.1", &["expc1.example.com", "*.mra.example.com"]),
        edge("expc2.example.com", &[]),
    ];
    let cn_only = PeerNames {
        common_names: vec!["EXPC1.example.com".into()],
        ..Default::default()
    };
    let (e, m) = match_edge(&edges, &cn_only).unwrap();
    assert_eq!(
        (e.host.as_str(), m.as_str()),
        ("10.0.0.1", "EXPC1.example.com")
    );
    let san = PeerNames {
        common_names: vec!["not registered".into()],
        dns_names: vec!["other.example.com".into(), "node.mra.example.com".into()],
        ..Default::default()
    };
    assert_eq!(match_edge(&edges, &san).unwrap().1, "node.mra.example.com");
    let host = PeerNames {
        dns_names: vec!["expc2.example.com".into()],
        ..Default::default()
    };
    assert_eq!(
        match_edge(&edges, &host).unwrap().0.host,
        "expc2.example.com"
    );
    // The host of an edge with subject names is not itself accepted.
    let ip = PeerNames {
        ip_addresses: vec!["10.0.0.1".parse().unwrap()],
        ..Default::default()
    };
    assert!(match_edge(&edges, &ip).is_none());
    assert!(match_edge(&[], &cn_only).is_none());
}

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

fn leaf(ca: &Ca, cn: &str, sans: &[&str]) -> CertificateDer<'static> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.signed_by(&key, &ca.issuer).unwrap().der().clone()
}

#[test]
fn names_are_read_from_real_certificates() {
    let ca = ca("Test CA");
    let der = leaf(
        &ca,
        "edge.example.com",
        &["a.example.com", "192.0.2.9", "::1"],
    );
    let n = PeerNames::from_der(der.as_ref());
    assert_eq!(n.common_names, ["edge.example.com"]);
    assert_eq!(n.dns_names, ["a.example.com"]);
    assert_eq!(
        n.ip_addresses,
        [
            "192.0.2.9".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    assert_eq!(
        n.to_string(),
        "CN=[edge.example.com] DNS=[a.example.com] IP=[192.0.2.9, ::1]"
    );
    assert_eq!(PeerNames::from_der(b"junk"), PeerNames::default());
}

#[test]
fn trust_decisions_chain_first_then_names() {
    let trusted = ca("Trusted CA");
    let stranger = ca("Stranger CA");
    let now = UnixTime::now();
    let t = EdgeTrust::new();
    let good = leaf(&trusted, "edge.example.com", &["edge-san.example.com"]);

    // Empty trust store: nothing verifies.
    assert_eq!(t.check(&good, &[], now), Err(Refusal::NoAnchors));

    assert!(t.set_anchors(std::slice::from_ref(&trusted.pem)).unwrap());
    assert!(
        !t.set_anchors(std::slice::from_ref(&trusted.pem)).unwrap(),
        "same set: no change"
    );
    assert_eq!(t.anchor_count(), 1);
    // Chain verified, but no edges registered yet.
    assert_eq!(t.check(&good, &[], now), Err(Refusal::NotRegistered));

    assert!(t.set_edges(vec![edge("10.1.1.1", &["EDGE-SAN.example.com"])]));
    let a = t.check(&good, &[], now).unwrap();
    assert_eq!(
        (a.edge.as_str(), a.matched.as_str()),
        ("10.1.1.1", "edge-san.example.com")
    );

    // A registered name from an untrusted CA is refused by the chain check, before names.
    let foreign = leaf(&stranger, "edge-san.example.com", &["edge-san.example.com"]);
    assert!(
        matches!(t.check(&foreign, &[], now), Err(Refusal::Chain(e)) if e.contains("UnknownIssuer"))
    );

    // Removing the anchor takes effect at once.
    assert!(t.set_anchors(std::slice::from_ref(&stranger.pem)).unwrap());
    assert!(matches!(t.check(&good, &[], now), Err(Refusal::Chain(_))));
    assert!(t.check(&foreign, &[], now).is_ok());
    assert!(t.set_anchors(&[]).unwrap());
    assert_eq!(t.check(&foreign, &[], now), Err(Refusal::NoAnchors));

    // Bad PEM keeps the previous anchors.
    t.set_anchors(std::slice::from_ref(&trusted.pem)).unwrap();
    assert!(matches!(
        t.set_anchors(&["junk".into()]),
        Err(EdgeTrustError::BadAnchor { index: 0, .. })
    ));
    assert!(t.check(&good, &[], now).is_ok());
}

#[test]
fn the_verifier_maps_refusals_to_alert_bearing_errors_and_counts_them() {
    let trusted = ca("Trusted CA");
    let t = Arc::new(EdgeTrust::new());
    let v = t.verifier();
    assert!(v.client_auth_mandatory());
    let now = UnixTime::now();
    let good = leaf(&trusted, "edge.example.com", &[]);
    assert_eq!(
        v.verify_client_cert(&good, &[], now).unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    t.set_anchors(std::slice::from_ref(&trusted.pem)).unwrap();
    assert_eq!(
        v.verify_client_cert(&good, &[], now).unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );
    t.set_edges(vec![edge("edge", &["*.example.com"])]);
    assert!(v.verify_client_cert(&good, &[], now).is_ok());
    let s = t.stats().snapshot();
    assert_eq!(
        (s.refused_no_anchors, s.refused_not_registered, s.accepted),
        (1, 1, 1)
    );
}
