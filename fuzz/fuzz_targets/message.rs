//! The header parser and the typed accessors the registrar uses, then the whole sans-IO
//! REGISTER path through `Registrar::handle_at`: no panic on any input.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sipreg_registrar::{
    BearerError, BearerValidator, ConnectionFacts, PortKind, Registrar, RegistrarConfig, Request,
    TokenIdentity, Transport,
};

struct AnyToken;
impl BearerValidator for AnyToken {
    fn validate(&self, token: &str, _now: i64) -> Result<TokenIdentity, BearerError> {
        if token.len() % 2 == 0 {
            Ok(TokenIdentity { user: token.into(), scope: "sip".into() })
        } else {
            Err(BearerError { description: "odd".into() })
        }
    }
}

fn registrar() -> &'static Registrar {
    static R: OnceLock<Registrar> = OnceLock::new();
    R.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = rt.block_on(async {
            let tmp = std::env::temp_dir().join(format!("sipreg-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&tmp).unwrap();
            let store = sipreg_store::SqliteStore::open(&tmp.join("db.sqlite")).unwrap();
            sipreg_store::Directory::load(&store).await.unwrap()
        });
        Registrar::new(RegistrarConfig::default(), dir, Arc::new(AnyToken))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = Request::parse(data) {
        let _ = (r.call_id(), r.cseq(), r.from_header(), r.to_header(), r.aor());
        let _ = (r.contacts(), r.expires(), r.top_via(), r.check_request_uri());
        r.stamp_via("192.0.2.1:5060".parse().unwrap());
    }
    let _ = Request::parse_lenient(data);
    for (port, transport) in [(PortKind::SipOAuth, Transport::Tls), (PortKind::Legacy, Transport::Udp)] {
        let facts = ConnectionFacts {
            remote: "192.0.2.1:5060".parse().unwrap(),
            local: "192.0.2.2:5060".parse().unwrap(),
            flow: 1,
            transport,
            port,
        };
        let _ = registrar().handle_at(data, &facts, 1_700_000_000);
    }
});
