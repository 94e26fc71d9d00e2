//! Token service end to end: password and refresh grants, rotation, JWKS verified by PyJWT.

use sipreg_e2e::peers::{have_pyjwt, python};
use sipreg_e2e::{Register, Server, SipClient};

#[tokio::test]
async fn password_grant_then_refresh_rotates_and_the_old_refresh_token_dies() {
    let s = Server::start().await;
    s.add_user_and_device("alice", "s3cret pass", "CSFalice", &["1010"], true);

    let t = s.password_token("alice", "s3cret pass").await;
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(t["scope"], "sip:register");
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(access.split('.').count(), 3, "a JWS compact access token");
    let old_refresh = t["refresh_token"].as_str().unwrap().to_owned();

    let (status, t2) = s
        .token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &old_refresh),
            ("client_id", "softphone"),
        ])
        .await;
    assert_eq!(status, 200, "{t2}");
    assert_ne!(
        t2["refresh_token"].as_str().unwrap(),
        old_refresh,
        "refresh tokens rotate"
    );
    assert!(t2["access_token"].as_str().is_some());

    let (status, err) = s
        .token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &old_refresh),
            ("client_id", "softphone"),
        ])
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"], "invalid_grant");
}

#[tokio::test]
async fn bad_token_requests_get_rfc6749_errors_without_user_enumeration() {
    let s = Server::start().await;
    s.add_user_and_device("bob", "right", "CSFbob", &["2000"], true);
    let base = [("grant_type", "password"), ("client_id", "softphone")];

    let (st, wrong_pw) = s
        .token_request(&[base[0], base[1], ("username", "bob"), ("password", "wrong")])
        .await;
    let (st2, no_user) = s
        .token_request(&[
            base[0],
            base[1],
            ("username", "nobody"),
            ("password", "wrong"),
        ])
        .await;
    assert_eq!((st, st2), (400, 400));
    assert_eq!(
        wrong_pw, no_user,
        "unknown user and wrong password must look the same"
    );
    assert_eq!(wrong_pw["error"], "invalid_grant");

    let (st, e) = s
        .token_request(&[("grant_type", "client_credentials")])
        .await;
    assert_eq!(st, 400);
    assert_eq!(e["error"], "unsupported_grant_type");
    let (st, e) = s
        .token_request(&[("grant_type", "password"), ("client_id", "softphone")])
        .await;
    assert_eq!(st, 400);
    assert_eq!(e["error"], "invalid_request");
    let (st, e) = s
        .token_request(&[
            base[0],
            ("client_id", "evil"),
            ("username", "bob"),
            ("password", "right"),
        ])
        .await;
    assert_eq!(st, 401);
    assert_eq!(e["error"], "invalid_client");
}

/// A peer no one here wrote — PyJWT — verifies our access token with our published JWKS.
#[tokio::test]
async fn pyjwt_verifies_the_access_token_against_the_jwks() {
    if !have_pyjwt() {
        return;
    }
    let s = Server::start().await;
    s.add_user_and_device("carol", "pw-carol", "CSFcarol", &["3000"], true);
    let t = s.password_token("carol", "pw-carol").await;
    let jwks = s
        .http()
        .get(format!("{}/oauth/jwks.json", s.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let script = r#"
import json, sys, jwt
jwks = json.loads(sys.argv[1]); token = sys.argv[2]; iss = sys.argv[3]
hdr = jwt.get_unverified_header(token)
assert hdr["alg"] == "ES256" and hdr["typ"] == "at+jwt", hdr
key = next(k for k in jwks["keys"] if k["kid"] == hdr["kid"])
assert "d" not in key, "private key material published"
pub = jwt.PyJWK(key).key
claims = jwt.decode(token, pub, algorithms=["ES256"], audience="sipreg", issuer=iss)
for c in ["sub", "client_id", "jti", "iat", "exp", "scope"]:
    assert c in claims, c
print(json.dumps(claims))
"#;
    let out = python(
        "PyJWT rejected the token",
        &[
            "-c",
            script,
            &jwks,
            t["access_token"].as_str().unwrap(),
            &format!("https://localhost:{}", s.https_port),
        ],
    );
    let claims: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(claims["sub"], "carol");
    assert_eq!(claims["client_id"], "softphone");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
}

/// A REGISTER of `line` with `token` on an open connection (kept open, so its binding stays live
/// whatever the flow-close policy); returns the status code.
async fn register_on(c: &mut SipClient, line: &str, call_id: &str, cseq: u32, token: &str) -> u16 {
    let msg = Register::new(line, call_id, cseq, c.local)
        .bearer(token)
        .header("Expires: 600")
        .build();
    c.request(&msg).await.unwrap().code
}

/// The users holding live bindings, as `GET /api/v1/registrations` lists them.
async fn registered_users(s: &Server) -> Vec<String> {
    let (status, regs) = s.api(reqwest::Method::GET, "registrations", None).await;
    assert_eq!(status, 200, "{regs}");
    regs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["user"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn revoking_one_clients_tokens_ends_its_access_tokens_only_and_can_drop_bindings() {
    let s = Server::start().await;
    s.oauth_mode(true);
    s.add_user_and_device("frank", "pw-frank", "CSFfrank", &["5000"], true);
    s.add_user_and_device("gina", "pw-gina", "CSFgina", &["5001"], true);
    let (code, o, e) = s.cli(
        &[
            "client",
            "add",
            "deskapp",
            "--redirect-uri",
            "https://deskapp.example/cb",
        ],
        None,
    );
    assert_eq!(code, 0, "{o}{e}");
    let soft = s.access_token("frank", "pw-frank").await;
    let (status, t) = s
        .token_request(&[
            ("grant_type", "password"),
            ("username", "frank"),
            ("password", "pw-frank"),
            ("client_id", "deskapp"),
        ])
        .await;
    assert_eq!(status, 200, "{t}");
    let desk = t["access_token"].as_str().unwrap().to_owned();
    let gina = s.access_token("gina", "pw-gina").await;

    let mut c = s.sip_connect().await.unwrap();
    let mut cg = s.sip_connect().await.unwrap();
    assert_eq!(
        register_on(&mut c, "5000", "frank-soft", 1, &soft).await,
        200
    );
    assert_eq!(
        register_on(&mut c, "5000", "frank-desk", 1, &desk).await,
        200
    );
    assert_eq!(register_on(&mut cg, "5001", "gina", 1, &gina).await, 200);

    // One client's tokens: its access token fails at the next REGISTER (even one the registrar
    // has verified and cached), the other client's keeps working, and bindings stay.
    let (status, body) = s
        .api(
            reqwest::Method::POST,
            "users/frank/revoke-tokens?client_id=deskapp",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["client_id"], "deskapp");
    assert_eq!(body["registrations_dropped"], 0, "{body}");
    assert_eq!(
        register_on(&mut c, "5000", "frank-desk", 2, &desk).await,
        401
    );
    assert_eq!(
        register_on(&mut c, "5000", "frank-soft", 2, &soft).await,
        200
    );
    let users = registered_users(&s).await;
    assert!(users.iter().any(|u| u == "frank"), "{users:?}");

    // The CLI with --drop-registrations: frank's bindings go at once, gina's stay.
    let (code, o, e) = s.cli(
        &[
            "user",
            "revoke-tokens",
            "frank",
            "--client",
            "softphone",
            "--drop-registrations",
        ],
        None,
    );
    assert_eq!(code, 0, "{o}{e}");
    let users = registered_users(&s).await;
    assert!(!users.iter().any(|u| u == "frank"), "{users:?}");
    assert!(users.iter().any(|u| u == "gina"), "{users:?}");
    assert_eq!(
        register_on(&mut c, "5000", "frank-soft", 3, &soft).await,
        401
    );
    assert_eq!(register_on(&mut cg, "5001", "gina", 2, &gina).await, 200);
}
