//! The OAuth authorization server end to end, against the real binary: the authorization code
//! flow driven through the login page in headless Chromium, refresh rotation and reuse detection,
//! revocation (RFC 7009 and the admin's), introspection, discovery, PyJWT interop and forgeries,
//! key rotation without mass logout, and brute-force backoff.
//!
//! Peers: Debian `chromium` and PyJWT. A missing peer skips its test with a message, and fails it
//! under `CI=true`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};
use sipreg_e2e::peers::{have_peer, have_pyjwt, python};
use sipreg_e2e::{Register, Server};

/// RFC 7636 Appendix B: a verifier and its S256 challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn have_chromium() -> bool {
    have_peer(
        "chromium",
        Command::new("sh").args([
            "-c",
            "command -v chromium || command -v chromium-browser || command -v google-chrome",
        ]),
        "apt-get install chromium",
    )
}

/// A server with alice (device CSFalice, line 1010) and OAuth mode on.
async fn ready() -> Server {
    let s = Server::start().await;
    s.add_user_and_device("alice", "pw-alice", "CSFalice", &["1010"], true);
    s.oauth_mode(true);
    s
}

/// One REGISTER for line 1010 with `token` on a fresh connection; returns the status code.
async fn register(s: &Server, token: &str) -> u16 {
    static CALL: AtomicU32 = AtomicU32::new(0);
    let n = CALL.fetch_add(1, Ordering::Relaxed);
    s.register_once("1010", &format!("oauth-flows-{n}"), token)
        .await
}

async fn post_form(s: &Server, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = s
        .http()
        .post(format!("{}{path}", s.base()))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn refresh(s: &Server, token: &str) -> (u16, Value) {
    s.token_request(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", "softphone"),
    ])
    .await
}

async fn introspect(s: &Server, token: &str, secret: Option<&str>) -> (u16, Value) {
    let mut req = s
        .http()
        .post(format!("{}/oauth/introspect", s.base()))
        .form(&[("token", token)]);
    if let Some(secret) = secret {
        req = req.bearer_auth(secret);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn query_param(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            v.replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%3a", ":")
                .replace("%2f", "/")
        })
    })
}

#[tokio::test]
async fn authorization_code_in_headless_chromium_then_refresh_reuse_revoke_introspect() {
    if !have_chromium() {
        return;
    }
    let s = ready().await;
    let issuer = s.base();

    // Discovery (RFC 8414) tells the client where everything is.
    let meta = s.oauth_metadata().await;
    assert_eq!(meta["issuer"], issuer.as_str());
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    let authorize = meta["authorization_endpoint"].as_str().unwrap();
    let token_endpoint = meta["token_endpoint"].as_str().unwrap();
    for k in ["jwks_uri", "revocation_endpoint", "introspection_endpoint"] {
        assert!(meta[k].as_str().unwrap().starts_with(&issuer), "{k}");
    }

    // The browser signs in on the real page: a wrong password first, then the right one.
    let url = format!(
        "{authorize}?response_type=code&client_id=softphone&scope=sip%3Aregister&state=st-42&code_challenge={CHALLENGE}&code_challenge_method=S256"
    );
    let out = Command::new("python3")
        .arg(script("browser_login.py"))
        .args([url.as_str(), "alice", "not-her-password", "pw-alice"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser flow failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let browser: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(browser["error_text"], "Invalid username or password.");
    assert_eq!(
        browser["cookie_flags"],
        json!({"secure": true, "httpOnly": true, "sameSite": "Strict"})
    );
    let callback = browser["callback"].as_str().unwrap();
    assert_eq!(query_param(callback, "state").as_deref(), Some("st-42"));
    assert_eq!(
        query_param(callback, "iss").as_deref(),
        Some(issuer.as_str())
    );
    let code = query_param(callback, "code").unwrap();
    let redirect_uri = browser["redirect_uri"].as_str().unwrap();

    // The code needs its verifier; a failed exchange spends it (so it cannot be retried).
    let exchange = |verifier: &'static str| {
        let (code, redirect_uri, token_endpoint) = (
            code.clone(),
            redirect_uri.to_owned(),
            token_endpoint.to_owned(),
        );
        let http = s.http().clone();
        async move {
            let resp = http
                .post(token_endpoint)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", redirect_uri.as_str()),
                    ("client_id", "softphone"),
                    ("code_verifier", verifier),
                ])
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, tokens) = exchange(VERIFIER).await;
    assert_eq!(status, 200, "{tokens}");
    let (status, replay) = exchange(VERIFIER).await;
    assert_eq!(
        (status, replay["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let first_refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(tokens["scope"], "sip:register");

    // The replayed code revoked the refresh token its first use got (RFC 6749 §4.1.2).
    let (status, _) = refresh(&s, &first_refresh).await;
    assert_eq!(status, 400, "a replayed code kills its tokens");

    // A fresh login (password grant) to exercise refresh rotation and reuse detection.
    let t = s.password_token("alice", "pw-alice").await;
    let r1 = t["refresh_token"].as_str().unwrap().to_owned();
    let (status, t2) = refresh(&s, &r1).await;
    assert_eq!(status, 200, "{t2}");
    let r2 = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    let (status, reuse) = refresh(&s, &r1).await;
    assert_eq!(
        (status, reuse["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _) = refresh(&s, &r2).await;
    assert_eq!(
        status, 400,
        "reuse of r1 revoked the whole family, r2 included"
    );

    // The access token from the browser login registers.
    assert_eq!(register(&s, &access).await, 200);

    // Introspection (RFC 7662) needs the resource-server credential (the admin token).
    let (status, _) = introspect(&s, &access, None).await;
    assert_eq!(status, 401);
    let (status, _) = introspect(&s, &access, Some("wrong")).await;
    assert_eq!(status, 401);
    let admin = s.admin_token();
    let (status, info) = introspect(&s, &access, Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["client_id"], "softphone");
    assert_eq!(info["iss"], issuer.as_str());

    // Revocation (RFC 7009): a refresh token ends its login; an access token ends at once.
    let t = s.password_token("alice", "pw-alice").await;
    let r = t["refresh_token"].as_str().unwrap();
    let (status, _) = post_form(
        &s,
        "/oauth/revoke",
        &[("token", r), ("client_id", "softphone")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = refresh(&s, r).await;
    assert_eq!(status, 400);
    let (status, _) = post_form(
        &s,
        "/oauth/revoke",
        &[("token", &access), ("client_id", "softphone")],
    )
    .await;
    assert_eq!(status, 200);
    let (_, info) = introspect(&s, &access, Some(&admin)).await;
    assert_eq!(info, json!({"active": false}));
    assert_eq!(register(&s, &access).await, 401, "a revoked access token");
    let (status, _) = post_form(
        &s,
        "/oauth/revoke",
        &[("token", "junk"), ("client_id", "softphone")],
    )
    .await;
    assert_eq!(
        status, 200,
        "unknown tokens are not an error (RFC 7009 §2.2)"
    );
}

#[tokio::test]
async fn the_login_page_refuses_unregistered_redirects_and_registered_clients_work() {
    let s = ready().await;
    let get = |path: String| {
        let http = s.http().clone();
        let url = format!("{}{path}", s.base());
        async move {
            let resp = http.get(url).send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.headers().clone(),
                resp.text().await.unwrap(),
            )
        }
    };
    let pkce = format!("code_challenge={CHALLENGE}&code_challenge_method=S256");
    // An unregistered redirect URI gets an error page, not a redirect (RFC 6749 §4.1.2.1).
    let (status, headers, body) = get(format!(
        "/oauth/authorize?response_type=code&client_id=softphone&redirect_uri=https%3A%2F%2Fevil.example%2Fcb&{pkce}"
    ))
    .await;
    assert_eq!(status, 400);
    assert!(headers.get("location").is_none());
    assert!(body.contains("did not register"), "{body}");

    // A client registered through the CLI gets its own page and its exact redirect URI only.
    let (code, out, err) = s.cli(
        &[
            "client",
            "add",
            "deskapp",
            "--name",
            "Desk App",
            "--redirect-uri",
            "https://app.example/cb",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = s.cli(&["client", "list"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("deskapp") && out.contains("softphone"),
        "{out}"
    );
    let (status, headers, body) = get(format!(
        "/oauth/authorize?response_type=code&client_id=deskapp&{pkce}"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Desk App"));
    assert!(headers["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("__Host-sipreg-login="));
    let (status, _, _) = get(format!(
        "/oauth/authorize?response_type=code&client_id=deskapp&redirect_uri=https%3A%2F%2Fapp.example%2Fcb2&{pkce}"
    ))
    .await;
    assert_eq!(status, 400);
    // PKCE is mandatory: without it the client hears invalid_request at its redirect URI.
    let no_redirects = reqwest::Client::builder()
        .use_preconfigured_tls(sipreg_e2e::client_tls(&s.ca_pem()))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(format!(
            "{}/oauth/authorize?response_type=code&client_id=deskapp&state=q",
            s.base()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://app.example/cb?error=invalid_request"),
        "{location}"
    );
    assert!(location.contains("state=q"));

    // An invalid redirect URI is refused at registration.
    let (code, _, err) = s.cli(
        &[
            "client",
            "add",
            "bad",
            "--redirect-uri",
            "http://evil.example/cb",
        ],
        None,
    );
    assert_eq!(code, 1, "{err}");
}

/// PyJWT verifies our tokens with our JWKS; tokens PyJWT mints with our key register, and its
/// forgeries from the negative list are refused, each by the registrar with 401.
#[tokio::test]
async fn pyjwt_interop_both_ways_and_its_forgeries_are_refused() {
    if !have_pyjwt() {
        return;
    }
    let s = ready().await;
    let issuer = s.base();
    let (kid, pem) = s.signing_key();
    let jwks = s
        .http()
        .get(format!("{}/oauth/jwks.json", s.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ours = s.access_token("alice", "pw-alice").await;
    let script = r#"
import json, sys, time, base64, hmac, hashlib, jwt
from cryptography.hazmat.primitives import serialization
pem, kid, iss, jwks, ours = sys.argv[1:6]
# 1. PyJWT verifies our token against the published JWKS.
hdr = jwt.get_unverified_header(ours)
key = jwt.PyJWK(next(k for k in json.loads(jwks)["keys"] if k["kid"] == hdr["kid"])).key
claims = jwt.decode(ours, key, algorithms=["ES256"], audience="sipreg", issuer=iss)
assert claims["sub"] == "alice", claims
now = int(time.time())
good = {"iss": iss, "sub": "alice", "aud": "sipreg", "iat": now, "nbf": now, "exp": now + 600,
        "jti": "pyjwt-1", "client_id": "softphone", "scope": "sip:register"}
H = {"typ": "at+jwt", "kid": kid}
def es(claims, headers=H, jti=[0]):
    jti[0] += 1
    c = dict(claims); c.setdefault("jti", "pyjwt-%d" % jti[0])
    return jwt.encode(c, pem, algorithm="ES256", headers=headers)
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def without(k): c = dict(good); del c[k]; return c
def hs256_with_public_key():
    pub = serialization.load_pem_private_key(pem.encode(), None).public_key()
    secret = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    h = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode())
    p = b64(json.dumps(good).encode())
    sig = hmac.new(secret, (h + "." + p).encode(), hashlib.sha256).digest()
    return h + "." + p + "." + b64(sig)
def alg_none():
    return b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": kid}).encode()) + "." + b64(json.dumps(good).encode()) + "."
out = {
  "valid": es(dict(good, jti="pyjwt-valid")),
  "alg_none": alg_none(),
  "hs256_public_key": hs256_with_public_key(),
  "unknown_kid": es(good, {"typ": "at+jwt", "kid": "not-a-key-of-ours"}),
  "kid_path": es(good, {"typ": "at+jwt", "kid": "../../../etc/passwd"}),
  "jku": es(good, {"typ": "at+jwt", "kid": kid, "jku": "https://evil.example/jwks.json"}),
  "x5u": es(good, {"typ": "at+jwt", "kid": kid, "x5u": "https://evil.example/cert.pem"}),
  "expired": es(dict(good, iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
  "nbf_future": es(dict(good, nbf=now + 3600, exp=now + 7200)),
  "iat_future": es(dict(good, iat=now + 86400, exp=now + 90000, nbf=now)),
  "wrong_iss": es(dict(good, iss="https://evil.example")),
  "wrong_aud": es(dict(good, aud="someone-else")),
  "missing_sub": es(without("sub")),
  "missing_exp": es(without("exp")),
  "wrong_typ": es(good, {"typ": "JWT", "kid": kid}),
  "crit": es(good, {"typ": "at+jwt", "kid": kid, "crit": ["exp"], "exp": 1}),
  "too_large": es(dict(good, pad="x" * 9000)),
  "other_user": es(dict(good, sub="mallory")),
  "no_register_scope": es(dict(good, scope="profile")),
}
print(json.dumps(out))
"#;
    let out = python("PyJWT", &["-c", script, &pem, &kid, &issuer, &jwks, &ours]);
    let minted: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        register(&s, minted["valid"].as_str().unwrap()).await,
        200,
        "a token PyJWT signed with our key and correct claims registers"
    );
    for (case, token) in minted.as_object().unwrap() {
        if case == "valid" {
            continue;
        }
        let code = register(&s, token.as_str().unwrap()).await;
        let expected = if case == "other_user" { 403 } else { 401 };
        assert!(
            code == expected || (case == "other_user" && code == 401),
            "{case}: got {code}"
        );
    }
    // The duplicate-member forgery needs hand-made JSON: two `sub`s, real signature.
    let dup = python(
        "PyJWT duplicate member",
        &[
            "-c",
            r#"
import sys, json, time, base64, jwt
from jwt.algorithms import ECAlgorithm
from cryptography.hazmat.primitives import serialization
pem, kid, iss = sys.argv[1:4]
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
h = b64(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": kid}).encode())
p = b64(('{"sub":"mallory","iss":"%s","sub":"alice","aud":"sipreg","iat":%d,"exp":%d,"jti":"dup","client_id":"softphone","scope":"sip:register"}' % (iss, now, now + 600)).encode())
key = serialization.load_pem_private_key(pem.encode(), None)
sig = ECAlgorithm(ECAlgorithm.SHA256).sign((h + "." + p).encode(), key)
print(h + "." + p + "." + b64(sig))
"#,
            &pem,
            &kid,
            &issuer,
        ],
    );
    let dup = String::from_utf8(dup).unwrap();
    assert_eq!(register(&s, dup.trim()).await, 401, "duplicate `sub`");
    // A refresh token presented as an access token.
    let refresh_token = s.password_token("alice", "pw-alice").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(register(&s, &refresh_token).await, 401);
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_working_until_revoke_previous() {
    let s = ready().await;
    let old = s.access_token("alice", "pw-alice").await;
    assert_eq!(register(&s, &old).await, 200);

    let (code, out, err) = s.cli(&["keys", "rotate"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(register(&s, &old).await, 200, "no mass logout");
    let (code, out, _) = s.cli(&["keys", "list"], None);
    assert_eq!(code, 0);
    assert!(out.contains("active") && out.contains("retiring"), "{out}");
    assert!(out.contains("ES256"));
    let (_, keys) = s.api(reqwest::Method::GET, "keys", None).await;
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys}");
    let jwks: Value = s
        .http()
        .get(format!("{}/oauth/jwks.json", s.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "old key still published"
    );

    let new = s.access_token("alice", "pw-alice").await;
    assert_ne!(
        new.split('.').next(),
        old.split('.').next(),
        "a new kid signs"
    );
    assert_eq!(register(&s, &new).await, 200);

    let (code, out, err) = s.cli(&["keys", "rotate", "--revoke-previous"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(register(&s, &old).await, 401, "the old key is gone");
    assert_eq!(
        register(&s, &new).await,
        401,
        "so is the one before this rotation"
    );
    let (_, keys) = s.api(reqwest::Method::GET, "keys", None).await;
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    assert_eq!(keys[0]["state"], "active");
    let fresh = s.access_token("alice", "pw-alice").await;
    assert_eq!(register(&s, &fresh).await, 200);
}

#[tokio::test]
async fn user_revoke_tokens_makes_the_next_register_fail_at_once() {
    let s = ready().await;
    s.add_user_and_device("bob", "pw-bob", "CSFbob", &["2000"], true);
    let t = s.password_token("alice", "pw-alice").await;
    let access = t["access_token"].as_str().unwrap().to_owned();
    let refresh_token = t["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(register(&s, &access).await, 200);
    // Registered twice: the second REGISTER is answered from the verified-token cache.
    assert_eq!(register(&s, &access).await, 200);
    let bob = s.access_token("bob", "pw-bob").await;

    let (code, out, err) = s.cli(&["user", "revoke-tokens", "alice"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("revoked 1 refresh token"), "{out}");
    assert_eq!(
        register(&s, &access).await,
        401,
        "revoked at the registrar at once"
    );
    let (status, _) = refresh(&s, &refresh_token).await;
    assert_eq!(status, 400, "the refresh token is gone too");

    // Bob is unaffected; alice can sign in again (after the revocation second has passed).
    let mut c = s.sip_connect().await.unwrap();
    let r = c
        .request(
            &Register::new("2000", "bob-1", 1, c.local)
                .bearer(&bob)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.text);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = s.access_token("alice", "pw-alice").await;
    assert_eq!(register(&s, &again).await, 200);

    // The API form, per client; an unknown user is a 404.
    let (status, body) = s
        .api(
            reqwest::Method::POST,
            "users/alice/revoke-tokens?client_id=softphone",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["client_id"], "softphone");
    let (status, _) = s
        .api(reqwest::Method::POST, "users/nobody/revoke-tokens", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn password_guessing_backs_off_without_revealing_which_users_exist() {
    let s = ready().await;
    let attempt = |user: &'static str, pw: &'static str| {
        let http = s.http().clone();
        let url = format!("{}/oauth/token", s.base());
        async move {
            let resp = http
                .post(url)
                .form(&[
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", pw),
                    ("client_id", "softphone"),
                ])
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry_after: i64 = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            (status, retry_after, resp.json::<Value>().await.unwrap())
        }
    };
    let mut answers = Vec::new();
    let mut first = Vec::new();
    for user in ["alice", "ghost"] {
        first.push(answers.len());
        // Five free failures, then waits that double (1 s, 2 s, 4 s, ...).
        for _ in 0..5 {
            let (status, _, body) = attempt(user, "guess").await;
            assert_eq!(status, 400, "{body}");
            answers.push(body);
        }
        let mut waited = 0;
        for _ in 0..20 {
            let (status, retry_after, body) = attempt(user, "guess").await;
            match status {
                400 => answers.push(body),
                429 if retry_after >= 3 => {
                    waited = retry_after;
                    break;
                }
                429 => tokio::time::sleep(std::time::Duration::from_secs(retry_after as u64)).await,
                other => panic!("{user}: {other} {body}"),
            }
        }
        assert!(waited >= 3, "{user}: the wait grows");
        // Even the right password must wait now: the answer does not depend on it.
        let (status, _, body) = attempt(user, "pw-alice").await;
        assert_eq!(status, 429, "{user}: {body}");
        assert_eq!(body["error"], "invalid_grant");
        answers.push(body);
    }
    assert!(
        answers
            .iter()
            .filter(|a| a.get("access_token").is_none())
            .all(|a| a["error"] == "invalid_grant"),
        "{answers:?}"
    );
    assert_eq!(
        answers[first[0]], answers[first[1]],
        "a real and an unknown user look the same"
    );
}

#[tokio::test]
async fn the_password_grant_can_be_switched_off_in_the_config() {
    let conf = tempfile::tempdir().unwrap();
    let path = conf.path().join("sipreg.toml");
    std::fs::write(&path, "[tokens]\npassword_grant = false\n").unwrap();
    let s = Server::start_with(&["--config", path.to_str().unwrap()]).await;
    s.add_user_and_device("alice", "pw-alice", "CSFalice", &["1010"], true);
    let (status, body) = s.password_grant("alice", "pw-alice").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let meta = s.oauth_metadata().await;
    assert_eq!(
        meta["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
}
