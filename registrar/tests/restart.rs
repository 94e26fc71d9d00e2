//! Bindings survive a restart: a registrar writes them behind to a real SQLite store, a new
//! registrar on the same file restores them, and a query lists them with a smaller remaining
//! `expires` and an unknown flow.

mod common;

use std::sync::Arc;
use std::time::Duration;

use sipreg_registrar::registrar::unix_now;
use sipreg_registrar::{
    BearerError, BearerValidator, ConnectionFacts, FlowState, PortKind, Registrar, RegistrarConfig,
    TokenIdentity, Transport,
};
use sipreg_store::{Directory, SqliteStore, Store};
use tokio_util::sync::CancellationToken;

#[path = "common/fake_validator.rs"]
mod fake_validator;
use fake_validator::FakeValidator;

fn facts() -> ConnectionFacts {
    ConnectionFacts {
        remote: "127.0.0.1:5555".parse().unwrap(),
        local: "127.0.0.1:5090".parse().unwrap(),
        flow: 42,
        transport: Transport::Tls,
        port: PortKind::SipOAuth,
    }
}

fn register(cseq: u32, contact: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5555;branch=z9hG4bK{cseq}\r\n\
From: <sip:1010@example.com>;tag=a\r\nTo: <sip:1010@example.com>\r\nCall-ID: restart\r\nCSeq: {cseq} REGISTER\r\n\
Authorization: Bearer good-alice\r\n{contact}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

async fn open(path: &std::path::Path) -> (Arc<SqliteStore>, Arc<Registrar>) {
    let store = Arc::new(SqliteStore::open(path).unwrap());
    let directory = Directory::load(store.as_ref()).await.unwrap();
    let cfg = RegistrarConfig {
        persist_interval: Duration::from_millis(50),
        unbind_on_close: false,
        ..RegistrarConfig::default()
    };
    let r = Arc::new(Registrar::new(cfg, directory, Arc::new(FakeValidator)));
    (store, r)
}

#[tokio::test]
async fn bindings_come_back_after_a_restart_with_less_time_left() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db.sqlite");
    {
        let store = SqliteStore::open(&db).unwrap();
        common::seed_alice(&store).await;
    }
    let t0 = unix_now();

    // First life: register two contacts, the persister writes them behind.
    let (store, r1) = open(&db).await;
    let cancel = CancellationToken::new();
    let persister = tokio::spawn(r1.clone().run_persister(store.clone(), cancel.clone()));
    let out = String::from_utf8(r1.handle_at(
        &register(
            1,
            "Contact: <sip:a@10.0.0.1;transport=tls>;q=0.5, <sip:b@10.0.0.1>;expires=600\r\n",
        ),
        &facts(),
        t0,
    ))
    .unwrap();
    assert!(out.starts_with("SIP/2.0 200 OK"), "{out}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.load_bindings(t0).await.unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never persisted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Unregister one; the clean shutdown flushes it even if the tick has not come.
    let out = String::from_utf8(r1.handle_at(
        &register(2, "Contact: <sip:b@10.0.0.1>;expires=0\r\n"),
        &facts(),
        t0,
    ))
    .unwrap();
    assert!(out.starts_with("SIP/2.0 200 OK"), "{out}");
    cancel.cancel();
    persister.await.unwrap();
    assert_eq!(r1.location.dirty_count(), 0);
    drop((store, r1));

    // Second life, 100 s later.
    let (store, r2) = open(&db).await;
    let later = t0 + 100;
    assert_eq!(r2.restore(store.as_ref(), later).await.unwrap(), 1);
    let b = &r2.location.bindings("1010@example.com", later)[0];
    assert_eq!(b.contact_uri, "sip:a@10.0.0.1;transport=tls");
    assert_eq!((b.flow, b.flow_state), (0, FlowState::Unknown));
    assert_eq!(b.q.as_deref(), Some("0.5"));
    // A query (no Contact) lists it with its remaining lifetime.
    let out = String::from_utf8(r2.handle_at(&register(3, ""), &facts(), later)).unwrap();
    assert!(
        out.contains("\r\nContact: <sip:a@10.0.0.1;transport=tls>;expires=3500;q=0.5\r\n"),
        "{out}"
    );
    // The CSeq ordering survives too: an older CSeq on the same Call-ID is refused.
    let out = String::from_utf8(r2.handle_at(
        &register(1, "Contact: <sip:a@10.0.0.1;transport=tls>\r\n"),
        &facts(),
        later,
    ))
    .unwrap();
    assert!(out.starts_with("SIP/2.0 500 CSeq Out Of Order"), "{out}");
}
