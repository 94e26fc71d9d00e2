//! Admin API and CLI: authentication, problem+json errors, the data dir's secrets.

use serde_json::json;
use sipreg_e2e::Server;

#[tokio::test]
async fn the_api_needs_the_admin_token_and_answers_problems() {
    let s = Server::start().await;
    let resp = s
        .http()
        .get(format!("{}/api/v1/users", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = s
        .http()
        .get(format!("{}/api/v1/users", s.base()))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    let (st, p) = s
        .api(
            reqwest::Method::POST,
            "users",
            Some(json!({"id": "bad id!", "password": "x"})),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(p["field"], "id", "{p}");
    let (st, p) = s
        .api(reqwest::Method::POST, "users", Some(json!({"id": "ok"})))
        .await;
    assert_eq!(st, 400, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("password"), "{p}");
    let (st, _) = s
        .api(
            reqwest::Method::POST,
            "users",
            Some(json!({"id": "ok", "password": "pw"})),
        )
        .await;
    assert_eq!(st, 201);
    let (st, p) = s
        .api(
            reqwest::Method::POST,
            "users",
            Some(json!({"id": "ok", "password": "pw"})),
        )
        .await;
    assert_eq!(st, 409, "{p}");
    let (st, p) = s
        .api(
            reqwest::Method::POST,
            "devices",
            Some(json!({"name": "CSFx", "owner": "ghost", "lines": ["1"]})),
        )
        .await;
    assert_eq!(st, 422, "{p}");
    let (st, p) = s
        .api(
            reqwest::Method::POST,
            "devices",
            Some(json!({"name": "CSFx", "owner": "ok", "lines": []})),
        )
        .await;
    assert_eq!((st, p["field"].as_str()), (400, Some("lines")), "{p}");
    let (st, _) = s.api(reqwest::Method::DELETE, "devices/nope", None).await;
    assert_eq!(st, 404);
    let (st, users) = s.api(reqwest::Method::GET, "users", None).await;
    assert_eq!(st, 200);
    assert!(
        users.to_string().find("password").is_none(),
        "password hashes never leave the server: {users}"
    );
}

#[tokio::test]
async fn cli_errors_name_the_fix_and_exit_codes_are_stable() {
    let s = Server::start().await;
    let (code, _, err) = s.cli(
        &["device", "add", "CSFz", "--owner", "ghost", "--line", "1"],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ghost"), "{err}");
    let (code, _, err) = s.cli(&["user", "add", "nopw"], Some(""));
    assert_eq!(code, 3);
    assert!(err.contains("standard input"), "{err}");
    let out = std::process::Command::new(sipreg_e2e::sipreg_bin())
        .args(["--data-dir", "/nonexistent/sipreg", "user", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sipreg serve"),
        "the message names the fix"
    );
}

#[tokio::test]
async fn secrets_are_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start().await;
    let mode = |p: &str| {
        std::fs::metadata(s.data_dir.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "data dir");
    assert_eq!(mode("admin-token"), 0o600);
    for entry in std::fs::read_dir(s.data_dir.join("tls")).unwrap() {
        let p = entry.unwrap().path();
        if p.to_string_lossy().contains("key") {
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                p.display()
            );
        }
    }
    let log = s.log();
    let token = std::fs::read_to_string(s.data_dir.join("admin-token")).unwrap();
    assert!(
        !log.contains(token.trim()),
        "the admin token must not be logged"
    );
}

#[tokio::test]
async fn bad_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sipreg.toml");
    std::fs::write(&cfg, "[listen]\nsip_oauth_port = 99\n").unwrap();
    let out = std::process::Command::new(sipreg_e2e::sipreg_bin())
        .args(["--data-dir"])
        .arg(dir.path().join("d"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen.sip_oauth_port") && err.contains("1024–49151"),
        "{err}"
    );
    std::fs::write(&cfg, "[listen]\nsip_oauth_prot = 5090\n").unwrap();
    let out = std::process::Command::new(sipreg_e2e::sipreg_bin())
        .args(["--data-dir"])
        .arg(dir.path().join("d"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("sip_oauth_prot"));
}
