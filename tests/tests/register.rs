//! REGISTER over TLS on the SIP OAuth port: challenges, success, unregister, 401 and 403 cases.

use serde_json::json;
use sipreg_e2e::jwt::{forge, now};
use sipreg_e2e::{Register, Server};

async fn ready() -> Server {
    let s = Server::start().await;
    s.add_user_and_device("alice", "pw-alice", "CSFalice", &["1010", "1011"], true);
    s.add_user_and_device("bob", "pw-bob", "CSFbob", &["2000"], true);
    s.add_user_and_device("dave", "pw-dave", "CSFdave", &["4000"], false);
    s.oauth_mode(true);
    s
}

#[tokio::test]
async fn unauthenticated_register_is_challenged_in_both_dialects() {
    let s = ready().await;
    let mut c = s.sip_connect().await.unwrap();

    // RFC 8898: 401 with WWW-Authenticate Bearer naming the authorization server.
    let r = c
        .request(&Register::new("1010", "c1", 1, c.local).build())
        .await
        .unwrap();
    assert_eq!(r.code, 401, "{}", r.text);
    let ch = r.header("WWW-Authenticate").unwrap();
    assert!(ch.starts_with("Bearer "), "{ch}");
    assert!(
        ch.contains(&format!(
            "authz_server=\"https://localhost:{}/\"",
            s.https_port
        )),
        "{ch}"
    );
    assert!(
        ch.contains("realm=") && ch.contains("scope=\"sip:register\""),
        "{ch}"
    );
    assert!(
        !ch.contains("error="),
        "no error code without credentials (RFC 6750 §3.1): {ch}"
    );

    // Unified CM dialect for Jabber: 407 with Proxy-Authenticate realm ccmsipline.
    let jabber = Register::new("1010", "c2", 1, c.local).header("User-Agent: Cisco-CSF");
    let r = c.request(&jabber.build()).await.unwrap();
    assert_eq!(r.code, 407, "{}", r.text);
    assert_eq!(
        r.header("Proxy-Authenticate").unwrap(),
        "Bearer realm=\"ccmsipline\""
    );

    // A Contact carrying the Cisco device-name feature parameter also selects that dialect.
    let mut reg = Register::new("1010", "c3", 1, c.local);
    reg.contact = Some(format!(
        "<sip:x@{};transport=tls>;+u.sip!devicename.ccm.cisco.com=\"CSFalice\"",
        c.local
    ));
    let r = c.request(&reg.build()).await.unwrap();
    assert_eq!(r.code, 407, "{}", r.text);
}

#[tokio::test]
async fn a_valid_token_registers_refreshes_and_unregisters() {
    let s = ready().await;
    let token = s.access_token("alice", "pw-alice").await;
    let mut c = s.sip_connect().await.unwrap();

    let r = c
        .request(
            &Register::new("1010", "call-a", 1, c.local)
                .bearer(&token)
                .header("Expires: 600")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.text);
    let contacts = r.headers("Contact");
    assert_eq!(contacts.len(), 1, "{}", r.text);
    assert!(
        contacts[0].contains(&format!("sip:1010@{}", c.local))
            && contacts[0].contains("expires=600"),
        "{contacts:?}"
    );
    assert_eq!(r.header("Expires").as_deref(), Some("600"));
    assert!(r.header("Date").is_some());
    assert!(
        r.header("To").unwrap().contains("tag="),
        "the registrar adds a To tag"
    );

    // Jabber's form, in Proxy-Authorization with token="...", refreshes the same binding.
    let mut reg = Register::new("1010", "call-a", 2, c.local);
    reg.contact = Some(format!(
        "<sip:1010@{};transport=tls>;+u.sip!devicename.ccm.cisco.com=\"CSFalice\"",
        c.local
    ));
    let r = c
        .request(
            &reg.header(format!("Proxy-Authorization: Bearer token=\"{token}\""))
                .header("User-Agent: Cisco-CSF")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(
        r.headers("Contact").len(),
        1,
        "a refresh does not add a binding: {}",
        r.text
    );
    assert!(
        r.header("Contact").unwrap().contains("expires=3600"),
        "{}",
        r.text
    );

    // Expires: 0 removes it; the 200 lists no binding.
    let r = c
        .request(
            &Register::new("1010", "call-a", 3, c.local)
                .bearer(&token)
                .header("Expires: 0")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.text);
    assert!(r.headers("Contact").is_empty(), "{}", r.text);

    // A query (no Contact) shows nothing left.
    let mut q = Register::new("1010", "call-a", 4, c.local).bearer(&token);
    q.contact = None;
    let r = c.request(&q.build()).await.unwrap();
    assert_eq!(r.code, 200, "{}", r.text);
    assert!(r.headers("Contact").is_empty(), "{}", r.text);
}

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn bad_tokens_get_401_invalid_token() {
    let s = ready().await;
    let (kid, pem) = s.signing_key();
    let now = now();
    let iss = format!("https://localhost:{}", s.https_port);
    let claims = |exp: i64, aud: &str| {
        json!({"iss": iss, "sub": "alice", "aud": aud, "exp": exp, "iat": now - 10, "jti": "j1",
               "client_id": "softphone", "scope": "sip:register"})
    };
    // Sanity: the forging works — a well-formed token with our key registers.
    let good = forge(&kid, &pem, claims(now + 600, "sipreg"));
    let mut c = s.sip_connect().await.unwrap();
    let r = c
        .request(
            &Register::new("1010", "ok", 1, c.local)
                .bearer(&good)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "a genuine token must pass: {}", r.text);

    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
        b64(&claims(now + 600, "sipreg"))
    );
    let cases = [
        ("expired", forge(&kid, &pem, claims(now - 3600, "sipreg"))),
        (
            "unpublished key",
            forge(&kid, &stranger, claims(now + 600, "sipreg")),
        ),
        ("alg none", none),
        (
            "wrong aud",
            forge(&kid, &pem, claims(now + 600, "someone-else")),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (i, (why, token)) in cases.iter().enumerate() {
        let r = c
            .request(
                &Register::new("1010", &format!("bad-{i}"), 10 + i as u32, c.local)
                    .bearer(token)
                    .build(),
            )
            .await
            .unwrap();
        assert_eq!(r.code, 401, "{why}: {}", r.text);
        let ch = r.header("WWW-Authenticate").unwrap_or_default();
        assert!(
            ch.starts_with("Bearer") && ch.contains("error=\"invalid_token\""),
            "{why}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn authorization_failures_get_403_with_a_warning() {
    let s = ready().await;
    let alice = s.access_token("alice", "pw-alice").await;
    let dave = s.access_token("dave", "pw-dave").await;
    let mut c = s.sip_connect().await.unwrap();

    // Alice names Bob's device.
    let mut reg = Register::new("2000", "f1", 1, c.local).bearer(&alice);
    reg.contact = Some(format!(
        "<sip:2000@{}>;+u.sip!devicename.ccm.cisco.com=\"CSFbob\"",
        c.local
    ));
    let r = c.request(&reg.build()).await.unwrap();
    assert_eq!(r.code, 403, "{}", r.text);
    assert!(
        r.header("Warning").unwrap().starts_with("399 "),
        "{}",
        r.text
    );

    // Alice registers a line that is not on her device (Bob's line, no device named).
    let r = c
        .request(
            &Register::new("2000", "f2", 1, c.local)
                .bearer(&alice)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 403, "{}", r.text);
    assert!(r.header("Warning").is_some(), "{}", r.text);

    // Alice's own device, but a line it does not carry.
    let mut reg = Register::new("9999", "f3", 1, c.local).bearer(&alice);
    reg.contact = Some(format!(
        "<sip:9999@{}>;+u.sip!devicename.ccm.cisco.com=\"CSFalice\"",
        c.local
    ));
    let r = c.request(&reg.build()).await.unwrap();
    assert_eq!(r.code, 403, "{}", r.text);

    // Dave's device profile has OAuth off.
    let r = c
        .request(
            &Register::new("4000", "f4", 1, c.local)
                .bearer(&dave)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 403, "{}", r.text);
    assert!(
        r.header("Warning")
            .unwrap()
            .contains("SIP OAuth Registration port Mismatch"),
        "{}",
        r.text
    );

    // And the connection is still usable: a good request still works.
    let r = c
        .request(
            &Register::new("1011", "f5", 1, c.local)
                .bearer(&alice)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.text);
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let s = ready().await;
    let mut c = s.sip_connect().await.unwrap();
    let bad = "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bKx\r\nFrom: <sip:1010@localhost>;tag=1\r\nTo: <sip:1010@localhost>\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    let r = c.request(bad).await.unwrap();
    assert_eq!(r.code, 400, "missing Call-ID: {}", r.text);
    // Unframeable bytes close the connection...
    c.send_raw(b"REGISTER sip:localhost SIP/2.0\r\nContent-Length: -5\r\n\r\n")
        .await;
    let r = c.read_response().await;
    assert!(
        r.is_none() || r.as_ref().is_some_and(|r| r.code == 400),
        "{r:?}"
    );
    // ...and a fresh client is still served.
    let mut c2 = s.sip_connect().await.unwrap();
    let r = c2
        .request(&Register::new("1010", "after", 1, c2.local).build())
        .await
        .unwrap();
    assert_eq!(r.code, 401);
}
