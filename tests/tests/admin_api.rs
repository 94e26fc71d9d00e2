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

#[tokio::test]
async fn a_port_change_moves_the_oauth_listener_live_and_clashes_are_refused() {
    let s = Server::start().await;
    s.add_user_and_device("pat", "pw", "CSFport", &["9100"], true);
    s.oauth_mode(true);
    assert!(s.sip_connect().await.is_ok());
    let (st, nodes) = s.api(reqwest::Method::GET, "nodes", None).await;
    assert_eq!(st, 200);
    assert_eq!(nodes[0]["name"], "node1");
    assert_eq!(nodes[0]["sip_oauth_port"], s.sip_oauth_port);

    // Out of Unified CM's range.
    let (st, p) = s.patch_node(json!({"sip_oauth_port": 80})).await;
    assert_eq!(
        (st, p["field"].as_str()),
        (400, Some("sip_oauth_port")),
        "{p}"
    );
    // Clashes with this node's HTTPS listener.
    let (st, p) = s.patch_node(json!({"sip_oauth_port": s.https_port})).await;
    assert_eq!(st, 409, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("listen.https_port"),
        "{p}"
    );
    // Held by another process: refused, and the old port keeps working.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let (st, p) = s.patch_node(json!({"sip_oauth_port": taken})).await;
    assert_eq!(st, 409, "{p}");
    assert!(
        s.sip_connect().await.is_ok(),
        "the old port still serves after a refused change"
    );
    let (_, nodes) = s.api(reqwest::Method::GET, "nodes", None).await;
    assert_eq!(
        nodes[0]["sip_oauth_port"], s.sip_oauth_port,
        "the store keeps the old port"
    );
    drop(squatter);

    // A free port: the listener moves without a restart.
    let new_port = sipreg_e2e::free_port();
    let (st, p) = s.patch_node(json!({"sip_oauth_port": new_port})).await;
    assert_eq!(st, 200, "{p}");
    let ca = s.ca_pem();
    let moved = sipreg_e2e::SipClient::connect(([127, 0, 0, 1], new_port).into(), &ca).await;
    assert!(moved.is_ok(), "the new port serves at once");
    assert!(s.sip_connect().await.is_err(), "the old port is closed");
    let (_, body) = s.config_file("CSFport.cnf.xml").await;
    assert!(
        body.contains(&format!("<sipOAuthPort>{new_port}</sipOAuthPort>")),
        "config files advertise it: {body}"
    );
}

#[tokio::test]
async fn health_and_readiness_probes_need_no_token() {
    let s = Server::start().await;
    let r = s
        .http()
        .get(format!("{}/healthz", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = s
        .http()
        .get(format!("{}/readyz", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["store"], "ok", "{body}");
    assert_eq!(
        body["sip_oauth_listener"], "closed (OAuth mode off)",
        "{body}"
    );
    s.oauth_mode(true);
    let body: serde_json::Value = s
        .http()
        .get(format!("{}/readyz", s.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["sip_oauth_listener"], "open", "{body}");
}

#[tokio::test]
async fn read_only_tokens_cannot_write_if_match_conflicts_get_412_and_changes_are_audited() {
    let s = Server::start().await;
    let (code, out, err) = s.cli(
        &["token", "create", "auditor", "--read-only", "--json"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(created["scope"], "read");

    // The read-only token reads but cannot write.
    let url = |p: &str| format!("{}/api/v1/{p}", s.base());
    let r = s
        .http()
        .get(url("users"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = s
        .http()
        .post(url("users"))
        .bearer_auth(&secret)
        .json(&json!({"id": "x", "password": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let p: serde_json::Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("read-only"), "{p}");

    // ETag / If-Match on the OAuth mode resource.
    let (code, _, _) = s.cli(&["user", "add", "ivy"], Some("pw\n"));
    assert_eq!(code, 0);
    let (_, _) = s
        .api(
            reqwest::Method::POST,
            "devices",
            Some(json!({"name": "CSFivy", "owner": "ivy", "lines": ["1"]})),
        )
        .await;
    let r = s
        .http()
        .get(url("devices/CSFivy"))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = s
        .http()
        .delete(url("devices/CSFivy"))
        .bearer_auth(s.admin_token())
        .header("If-Match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412, "a stale If-Match is refused");
    let r = s
        .http()
        .delete(url("devices/CSFivy"))
        .bearer_auth(s.admin_token())
        .header("If-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "the current ETag wins");

    // The audit log names who did what, with before and after.
    let (_, log) = s.api(reqwest::Method::GET, "audit", None).await;
    let entries = log.as_array().unwrap();
    let del = entries
        .iter()
        .find(|e| e["action"] == "DELETE /api/v1/devices/CSFivy")
        .expect("deletion audited");
    assert_eq!(del["actor"], "bootstrap");
    assert_eq!(del["before"]["name"], "CSFivy");
    assert!(del["after"].is_null());
    assert!(entries
        .iter()
        .any(|e| e["action"] == "POST /api/v1/users/ivy"));

    // Revoked tokens stop working.
    let (code, _, err) = s.cli(&["token", "revoke", created["id"].as_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    let r = s
        .http()
        .get(url("users"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn status_shows_listeners_and_counts_and_completions_print() {
    let s = Server::start().await;
    s.add_user_and_device("uma", "pw", "CSFuma", &["1200"], true);
    let (code, out, err) = s.cli(&["status"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node1") && out.contains("disabled"), "{out}");
    assert!(
        out.contains("sip-oauth (TLS)") && out.contains("closed"),
        "{out}"
    );
    s.oauth_mode(true);
    let (_, out, _) = s.cli(&["status", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["counts"]["devices"], 1);
    assert_eq!(v["counts"]["users"], 1);
    let oauth = v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "sip-oauth (TLS)")
        .unwrap()
        .clone();
    assert_eq!(oauth["open"], true, "{v}");
    assert_eq!(oauth["address"], format!("127.0.0.1:{}", s.sip_oauth_port));
    // Every listener the node opened is listed with its bound address, like `show open ports`.
    let address_of = |name: &str| {
        v["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .map(|l| l["address"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no listener {name} in {v}"))
    };
    assert!(address_of("config-http").ends_with(&format!(":{}", s.config_port)));
    assert_eq!(
        address_of("sip (UDP, Digest)"),
        format!("127.0.0.1:{}", s.sip_port)
    );
    assert_eq!(
        address_of("sip-tls (TLS, Digest)"),
        format!("127.0.0.1:{}", s.secured_sip_port)
    );
    assert!(
        v["server_certificate_expires"]
            .as_str()
            .unwrap()
            .contains("GMT"),
        "{v}"
    );

    let (code, out, _) = s.cli(&["completions", "bash"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("_sipreg") && out.contains("oauth-mode"),
        "bash completion script"
    );
}

#[tokio::test]
async fn registrations_are_listed_filtered_and_force_unregistered() {
    let s = Server::start().await;
    s.add_user_and_device("reg", "pw-reg", "CSFreg", &["1500", "1501"], true);
    s.oauth_mode(true);
    let token = s.access_token("reg", "pw-reg").await;
    let mut c = s.sip_connect().await.unwrap();
    for (line, call) in [("1500", "r1"), ("1501", "r2")] {
        let r = c
            .request(
                &sipreg_e2e::Register::new(line, call, 1, c.local)
                    .bearer(&token)
                    .header("Expires: 600")
                    .build(),
            )
            .await
            .unwrap();
        assert_eq!(r.code, 200, "{}", r.text);
    }
    let (st, all) = s
        .api(reqwest::Method::GET, "registrations?device=csfreg", None)
        .await;
    assert_eq!(st, 200);
    let all = all.as_array().unwrap().clone();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter()
            .all(|r| r["node"] == "node1" && r["user"] == "reg"),
        "{all:?}"
    );
    assert!(
        all.iter()
            .all(|r| (590..=600).contains(&r["expires_in"].as_i64().unwrap())),
        "{all:?}"
    );
    let (_, one) = s
        .api(
            reqwest::Method::GET,
            "registrations?aor=1500@localhost",
            None,
        )
        .await;
    assert_eq!(one.as_array().unwrap().len(), 1, "{one}");

    let (st, p) = s.api(reqwest::Method::DELETE, "registrations", None).await;
    assert_eq!(st, 400, "an unfiltered force-unregister is refused: {p}");
    let (st, body) = s
        .api(
            reqwest::Method::DELETE,
            "registrations?aor=1500@localhost",
            None,
        )
        .await;
    assert_eq!((st, body["removed"].as_u64()), (200, Some(1)));
    let (_, body) = s
        .api(reqwest::Method::DELETE, "registrations?device=CSFreg", None)
        .await;
    assert_eq!(body["removed"], 1);
    let (_, left) = s.api(reqwest::Method::GET, "registrations", None).await;
    assert!(left.as_array().unwrap().is_empty(), "{left}");
}

#[tokio::test]
async fn an_online_backup_restores_the_state_it_captured() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Server::start().await;
    s.add_user_and_device("kept", "pw", "CSFkept", &["1600"], true);
    let backup = s.dir.path().join("sipreg-backup.db");
    let (code, out, err) = s.cli(&["backup", backup.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600,
        "it holds keys"
    );
    let (code, _, err) = s.cli(&["backup", backup.to_str().unwrap()], None);
    assert_eq!(code, 1, "an existing file is never overwritten: {err}");
    let (code, _, _) = s.cli(&["user", "add", "later"], Some("pw\n"));
    assert_eq!(code, 0);
    let (code, _, err) = s.cli(&["restore", backup.to_str().unwrap()], None);
    assert_eq!(code, 1, "restore refuses while the server runs");
    assert!(err.contains("stop it first"), "{err}");

    s.stop();
    let junk = s.dir.path().join("junk");
    std::fs::write(&junk, b"not a database").unwrap();
    let (code, _, err) = s.cli(&["restore", junk.to_str().unwrap()], None);
    assert_eq!(code, 1, "{err}");
    let (code, out, err) = s.cli(&["restore", backup.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    s.restart().await;
    let (_, users) = s.api(reqwest::Method::GET, "users", None).await;
    let ids: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(ids, ["kept"], "the state at backup time is back");
}

#[tokio::test]
async fn regenerating_the_certificate_applies_to_new_connections_while_old_ones_carry_on() {
    let s = Server::start().await;
    s.add_user_and_device("cy", "pw-cy", "CSFcy", &["1700"], true);
    s.oauth_mode(true);
    let token = s.access_token("cy", "pw-cy").await;
    let mut old = s.sip_connect().await.unwrap();
    let r = old
        .request(
            &sipreg_e2e::Register::new("1700", "c1", 1, old.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200);
    let (code, out, err) = s.cli(&["certs", "show", "--json"], None);
    assert_eq!(code, 0, "{err}");
    let before: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        before["sha256"],
        old.peer_sha256(),
        "show names the certificate in use"
    );
    assert!(
        before["sans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "localhost"),
        "{before}"
    );

    let (code, out, err) = s.cli(&["certs", "regenerate", "--json"], None);
    assert_eq!(code, 0, "{err}");
    let after: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_ne!(after["sha256"], before["sha256"]);

    let fresh = s
        .sip_connect()
        .await
        .expect("the new certificate chains to the same CA");
    assert_eq!(
        fresh.peer_sha256(),
        after["sha256"].as_str().unwrap(),
        "new handshakes see it at once"
    );
    let r = old
        .request(
            &sipreg_e2e::Register::new("1700", "c1", 2, old.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "the old connection still works");
    let (st, _) = s.api(reqwest::Method::GET, "certs/server", None).await;
    assert_eq!(
        st, 200,
        "HTTPS itself now serves the new certificate and still answers"
    );
}

#[tokio::test]
async fn a_device_change_applies_live_and_honours_if_match() {
    let s = Server::start().await;
    s.add_user_and_device("dee", "pw-dee", "CSFdee", &["1800"], true);
    s.oauth_mode(true);
    let token = s.access_token("dee", "pw-dee").await;
    let url = format!("{}/api/v1/devices/CSFdee", s.base());
    let admin = s.admin_token();
    let etag = s
        .http()
        .get(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();

    let r = s
        .http()
        .patch(&url)
        .bearer_auth(&admin)
        .header("If-Match", "\"old\"")
        .json(&json!({"lines": ["1801"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412);
    let (code, _, err) = s.cli(
        &[
            "device", "set", "CSFdee", "--line", "1801", "--line", "1802",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let r = s
        .http()
        .patch(&url)
        .bearer_auth(&admin)
        .header("If-Match", &etag)
        .json(&json!({"oauth": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412, "the CLI change moved the ETag on");

    let (_, body) = s.config_file("CSFdee.cnf.xml").await;
    assert!(
        body.contains("<name>1802</name>") && !body.contains("<name>1800</name>"),
        "{body}"
    );
    let mut c = s.sip_connect().await.unwrap();
    let r = c
        .request(
            &sipreg_e2e::Register::new("1800", "d1", 1, c.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(
        r.code, 403,
        "the removed line no longer registers: {}",
        r.text
    );
    let r = c
        .request(
            &sipreg_e2e::Register::new("1802", "d2", 1, c.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "the new line does: {}", r.text);

    let (st, p) = s
        .api(
            reqwest::Method::PATCH,
            "devices/CSFdee",
            Some(json!({"owner": "ghost"})),
        )
        .await;
    assert_eq!(st, 422, "{p}");
    let (st, p) = s
        .api(
            reqwest::Method::PATCH,
            "devices/CSFdee",
            Some(json!({"lines": []})),
        )
        .await;
    assert_eq!((st, p["field"].as_str()), (400, Some("lines")), "{p}");
}

#[tokio::test]
async fn a_password_change_takes_effect_for_the_next_login() {
    let s = Server::start().await;
    let (code, _, _) = s.cli(&["user", "add", "pam"], Some("old-pw\n"));
    assert_eq!(code, 0);
    s.password_token("pam", "old-pw").await;
    let (code, _, err) = s.cli(&["user", "passwd", "pam"], Some("new-pw\n"));
    assert_eq!(code, 0, "{err}");
    let (st, e) = s.password_grant("pam", "old-pw").await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "the old password no longer works"
    );
    s.password_token("pam", "new-pw").await;
    let (st, _) = s
        .api(
            reqwest::Method::PATCH,
            "users/nobody",
            Some(json!({"password": "x"})),
        )
        .await;
    assert_eq!(st, 404);
    let (_, log) = s.api(reqwest::Method::GET, "audit", None).await;
    assert!(
        !log.to_string().contains("new-pw"),
        "passwords never reach the audit log"
    );
}
