//! Token service end to end: password and refresh grants, rotation, JWKS verified by PyJWT.

use sipreg_e2e::{peers_required, Server};

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
    let have = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        assert!(
            !peers_required(),
            "PyJWT is required under CI=true (pip install pyjwt cryptography)"
        );
        eprintln!("SKIP: PyJWT not installed (pip install pyjwt cryptography)");
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
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &jwks,
            t["access_token"].as_str().unwrap(),
            &format!("https://localhost:{}", s.https_port),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyJWT rejected the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["sub"], "carol");
    assert_eq!(claims["client_id"], "softphone");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
}
