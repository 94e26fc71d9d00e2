//! The header parser, the typed accessors the registrar uses, and the whole sans-IO decision
//! (`process`) on both port kinds: no panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipreg_registrar::{
    process, Authenticators, BearerError, BearerValidator, ConnectionFacts, DigestAuth, Location,
    PortKind, RegistrarConfig, Request, TokenIdentity, Transport,
};
use sipreg_store::DirectorySnapshot;

struct EvenTokens;
impl BearerValidator for EvenTokens {
    fn validate(&self, token: &str, _now: i64) -> Result<TokenIdentity, BearerError> {
        if token.len() % 2 == 0 {
            Ok(TokenIdentity { user: token.into(), scope: "sip".into() })
        } else {
            Err(BearerError { description: "odd".into() })
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = Request::parse_lenient(data);
    let Ok(mut req) = Request::parse(data) else { return };
    let _ = (req.call_id(), req.cseq(), req.from_header(), req.to_header(), req.aor());
    let _ = (req.contacts(), req.expires(), req.top_via(), req.check_request_uri());
    req.stamp_via("192.0.2.1:5060".parse().unwrap());
    let dir = DirectorySnapshot::default();
    let digest = DigestAuth::new([3; 32], 300);
    let location = Location::new();
    let cfg = RegistrarConfig::default();
    for (port, transport) in [(PortKind::SipOAuth, Transport::Tls), (PortKind::Legacy, Transport::Udp)] {
        let facts = ConnectionFacts {
            remote: "192.0.2.1:5060".parse().unwrap(),
            local: "192.0.2.2:5060".parse().unwrap(),
            flow: 1,
            transport,
            port,
        };
        let auth = Authenticators { bearer: &EvenTokens, digest: &digest };
        if let Some(r) = process(&req, &facts, &dir, auth, &location, &cfg, 1_700_000_000) {
            assert!(r.bytes.ends_with(b"\r\n\r\n"));
        }
    }
});
