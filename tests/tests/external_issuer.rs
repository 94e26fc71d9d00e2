//! Tokens of a trusted external issuer (an enterprise IdP) minted by PyJWT register like ours;
//! PyJWT forgeries are refused; removing the issuer ends its tokens.

use sipreg_e2e::peers::{have_pyjwt, python};
use sipreg_e2e::Server;

/// One REGISTER of dave's line with `token` on a fresh connection; returns the status code.
async fn register(s: &Server, token: &str, n: u32) -> u16 {
    s.register_once("4000", &format!("ext-{n}"), token).await
}

#[tokio::test]
async fn pyjwt_tokens_of_a_trusted_issuer_register_and_forgeries_do_not() {
    if !have_pyjwt() {
        return;
    }
    let s = Server::start().await;
    s.oauth_mode(true);
    s.add_user_and_device("dave@corp", "pw-dave", "CSFdave", &["4000"], true);
    let dir = tempfile::tempdir().unwrap();
    let iss = "https://idp.corp.example/tenant";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/external_idp.py");
    let out = python(
        "external_idp.py",
        &[
            script,
            dir.path().to_str().unwrap(),
            iss,
            "api://sipreg",
            "dave@corp",
        ],
    );
    let tokens: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let jwks = dir.path().join("jwks.json");

    // Before the issuer is trusted, its token is nobody's.
    assert_eq!(
        register(&s, tokens["rs256"].as_str().unwrap(), 0).await,
        401
    );
    let (code, o, e) = s.cli(
        &[
            "issuer",
            "add",
            iss,
            "--jwks-file",
            jwks.to_str().unwrap(),
            "--audience",
            "api://sipreg",
            "--user-claim",
            "preferred_username",
        ],
        None,
    );
    assert_eq!(code, 0, "{o}{e}");
    let (code, o, _) = s.cli(&["issuer", "list", "--json"], None);
    assert_eq!(code, 0);
    assert!(o.contains(iss), "{o}");

    assert_eq!(
        register(&s, tokens["rs256"].as_str().unwrap(), 1).await,
        200
    );
    assert_eq!(
        register(&s, tokens["es256"].as_str().unwrap(), 2).await,
        200
    );
    for (i, bad) in [
        "wrong_aud",
        "expired",
        "unknown_kid",
        "alg_none",
        "hs256_public_key",
        "untrusted_issuer",
        "no_user",
    ]
    .iter()
    .enumerate()
    {
        let t = tokens[*bad].as_str().unwrap();
        assert_eq!(register(&s, t, 10 + i as u32).await, 401, "{bad}");
    }

    // Bad settings are refused with the project's invalid-field problem naming the field.
    let (status, body) = s
        .api(
            reqwest::Method::POST,
            "issuers",
            Some(
                serde_json::json!({"issuer": "https://x.example", "audience": "a",
                "jwks_url": "http://idp.example/keys"}),
            ),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "jwks_url", "{body}");

    let (code, o, e) = s.cli(&["issuer", "remove", iss], None);
    assert_eq!(code, 0, "{o}{e}");
    assert_eq!(
        register(&s, tokens["rs256"].as_str().unwrap(), 30).await,
        401,
        "an issuer no longer trusted: its tokens fail at once, cached or not"
    );
}

/// `python3 -m http.server` serving a directory on a loopback ephemeral port; killed on drop.
struct JwksServer {
    child: std::process::Child,
    port: u16,
}

impl JwksServer {
    fn start(dir: &std::path::Path) -> JwksServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server said: {line:?}"));
        JwksServer { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs tests/scripts/idp_keys.py; returns its stdout, trimmed.
fn idp(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/idp_keys.py");
    let argv: Vec<&str> = std::iter::once(script)
        .chain(args.iter().copied())
        .collect();
    let out = python(&format!("idp_keys.py {args:?}"), &argv);
    String::from_utf8_lossy(&out).trim().to_owned()
}

#[tokio::test]
async fn a_jwks_served_over_http_follows_key_rollover_and_outlives_its_server() {
    if !have_pyjwt() {
        return;
    }
    // The refetch rate limit (30 s by default) down to its floor, so rollover is quick to test.
    let conf = tempfile::tempdir().unwrap();
    let path = conf.path().join("sipreg.toml");
    std::fs::write(&path, "[tokens]\njwks_refetch_secs = 1\n").unwrap();
    let s = Server::start_with(&["--config", path.to_str().unwrap()]).await;
    s.oauth_mode(true);
    s.add_user_and_device("erin", "pw-erin", "CSFerin", &["4000"], true);

    let idp_dir = tempfile::tempdir().unwrap();
    let d = idp_dir.path().to_str().unwrap();
    idp(&["add-key", d, "k1", "RS256"]);
    let mut jwks = JwksServer::start(idp_dir.path());
    let iss = "https://login.corp.example/v2";
    let aud = "api://sipreg-rollover";
    let mint = |kid: &str, alg: &str| idp(&["mint", d, kid, alg, iss, aud, "erin"]);
    let url = format!("http://127.0.0.1:{}/jwks.json", jwks.port);
    // The default user claim, `sub`, names the user.
    let (code, o, e) = s.cli(
        &["issuer", "add", iss, "--jwks-url", &url, "--audience", aud],
        None,
    );
    assert_eq!(code, 0, "{o}{e}");

    assert_eq!(register(&s, &mint("k1", "RS256"), 100).await, 200);

    // Rollover at the IdP: a new key (an EC one) joins the served JWKS and signs from now on.
    // The first token naming it makes the registrar fetch the JWKS again.
    idp(&["add-key", d, "k2", "ES256"]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let k2 = mint("k2", "ES256");
    assert_eq!(register(&s, &k2, 101).await, 200, "{}", s.log());
    assert_eq!(
        register(&s, &mint("k1", "RS256"), 102).await,
        200,
        "the old key still verifies while the IdP publishes it"
    );

    // The IdP's JWKS endpoint goes away: the last good keys stay in force, for fresh tokens
    // (not answered from the verified-token cache) too.
    jwks.stop();
    assert_eq!(register(&s, &mint("k1", "RS256"), 103).await, 200);
    assert_eq!(register(&s, &mint("k2", "ES256"), 104).await, 200);
    // A key published only while the endpoint is down cannot be fetched: refused, and the failed
    // fetch is logged; the known keys keep working afterwards.
    idp(&["add-key", d, "k3", "RS256"]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(register(&s, &mint("k3", "RS256"), 105).await, 401);
    assert!(
        s.log().contains("external issuer keys unavailable"),
        "{}",
        s.log()
    );
    assert_eq!(register(&s, &mint("k2", "ES256"), 106).await, 200);

    // Back up on a new port, as after an IdP restart: the admin points the issuer there, and
    // the key published meanwhile is fetched.
    let jwks = JwksServer::start(idp_dir.path());
    let url = format!("http://127.0.0.1:{}/jwks.json", jwks.port);
    let (status, body) = s
        .api(
            reqwest::Method::PUT,
            &format!("issuers/{}", path_segment(iss)),
            Some(serde_json::json!({ "jwks_url": url })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jwks_url"], url.as_str());
    assert_eq!(register(&s, &mint("k3", "RS256"), 107).await, 200);
}

/// Percent-encodes everything but RFC 3986 unreserved characters (an issuer URL as one path
/// segment).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
