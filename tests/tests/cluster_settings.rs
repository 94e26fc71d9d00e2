//! Cluster settings through the API and CLI, applied live: token lifetime, password grant,
//! challenge dialect and expiry bounds change the very next request; ETag/If-Match, read-only
//! tokens, range problems and the audit log behave as on every other resource.

use serde_json::{json, Value};
use sipreg_e2e::jwt::claims;
use sipreg_e2e::{Register, Server};

async fn patch(s: &Server, body: Value) -> (u16, Value) {
    s.api(reqwest::Method::PATCH, "cluster", Some(body)).await
}

#[tokio::test]
async fn settings_apply_to_the_next_token_and_register() {
    let s = Server::start().await;
    s.add_user_and_device("alice", "pw", "CSFalice", &["1010"], true);
    s.oauth_mode(true);

    let (st, v) = s.api(reqwest::Method::GET, "cluster", None).await;
    assert_eq!(st, 200);
    assert_eq!(v["access_token_lifetime_minutes"], 60, "{v}");
    assert_eq!(v["challenge_dialect"], "auto", "{v}");
    assert_eq!(v["oauth_mode"], true, "{v}");

    // Token lifetime: the next token's exp − iat follows.
    let (code, out, err) = s.cli(
        &["cluster", "set", "--access-token-lifetime", "30", "--json"],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("\"access_token_lifetime_minutes\": 30"),
        "{out}"
    );
    let t = s.password_token("alice", "pw").await;
    assert_eq!(t["expires_in"], 1800, "{t}");
    let c = claims(t["access_token"].as_str().unwrap());
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        1800
    );
    let token = t["access_token"].as_str().unwrap().to_owned();

    // Refresh login off: no refresh token.
    let (st, _) = patch(&s, json!({"refresh_login": false})).await;
    assert_eq!(st, 200);
    let t = s.password_token("alice", "pw").await;
    assert!(t.get("refresh_token").is_none(), "{t}");

    // Password grant off: unsupported_grant_type, and discovery stops listing it.
    let (st, _) = patch(&s, json!({"password_grant": false})).await;
    assert_eq!(st, 200);
    let (st, body) = s.password_grant("alice", "pw").await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let meta = s.oauth_metadata().await;
    let grants = meta["grant_types_supported"].to_string();
    assert!(
        !grants.contains("password") && !grants.contains("refresh_token"),
        "{grants}"
    );

    // Challenge dialect: the 401/407 of the next REGISTER follows.
    let mut sip = s.sip_connect().await.unwrap();
    let r = sip
        .request(&Register::new("1010", "d1", 1, sip.local).build())
        .await
        .unwrap();
    assert_eq!(r.code, 401, "auto, a non-Cisco client: RFC 8898");
    let (code, _, err) = s.cli(&["cluster", "set", "--challenge-dialect", "cucm"], None);
    assert_eq!(code, 0, "{err}");
    let r = sip
        .request(&Register::new("1010", "d1", 2, sip.local).build())
        .await
        .unwrap();
    assert_eq!(r.code, 407, "cucm");
    assert_eq!(
        r.header("Proxy-Authenticate").as_deref(),
        Some("Bearer realm=\"ccmsipline\"")
    );
    let (st, _) = patch(&s, json!({"challenge_dialect": "rfc8898"})).await;
    assert_eq!(st, 200);
    let r = sip
        .request(
            &Register::new("1010", "d1", 3, sip.local)
                .header("User-Agent: Cisco-CSF")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 401, "rfc8898 even for Jabber");
    let www = r.header("WWW-Authenticate").unwrap();
    assert!(
        www.starts_with("Bearer realm=") && www.contains("scope=") && www.contains("authz_server="),
        "{www}"
    );

    // Expiry bounds: 423 with the new Min-Expires; the new maximum caps the grant.
    let (st, _) = patch(
        &s,
        json!({"min_expires": 600, "default_expires": 900, "max_expires": 1200}),
    )
    .await;
    assert_eq!(st, 200);
    let r = sip
        .request(
            &Register::new("1010", "d1", 4, sip.local)
                .bearer(&token)
                .header("Expires: 300")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 423);
    assert_eq!(r.header("Min-Expires").as_deref(), Some("600"));
    let r = sip
        .request(
            &Register::new("1010", "d1", 5, sip.local)
                .bearer(&token)
                .header("Expires: 3600")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200);
    assert_eq!(r.header("Expires").as_deref(), Some("1200"));

    // `cluster show` prints the table.
    let (code, out, _) = s.cli(&["cluster", "show"], None);
    assert_eq!(code, 0);
    assert!(out.contains("challenge dialect:      rfc8898"), "{out}");
    assert!(
        out.contains("default 900 s, min 600 s, max 1200 s"),
        "{out}"
    );
}

#[tokio::test]
async fn range_problems_if_match_read_only_and_audit() {
    let s = Server::start().await;
    let url = format!("{}/api/v1/cluster", s.base());

    // 422 naming the field and the range; nothing changes.
    let (st, p) = patch(&s, json!({"access_token_lifetime_minutes": 2000})).await;
    assert_eq!(st, 422, "{p}");
    assert_eq!(p["field"], "access_token_lifetime_minutes");
    assert!(p["detail"].as_str().unwrap().contains("1–1440"), "{p}");
    let (st, p) = patch(&s, json!({"min_expires": 9000})).await;
    assert_eq!((st, p["field"].as_str()), (422, Some("min_expires")), "{p}");
    let (st, p) = patch(&s, json!({"challenge_dialect": "sip"})).await;
    assert_eq!(st, 400, "{p}");
    let (code, _, err) = s.cli(&["cluster", "set", "--refresh-token-lifetime", "400"], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("refresh_token_lifetime_days") && err.contains("1–365"),
        "{err}"
    );
    let (_, v) = s.api(reqwest::Method::GET, "cluster", None).await;
    assert_eq!(v["access_token_lifetime_minutes"], 60);

    // If-Match: a stale ETag gets 412, the current one wins.
    let r = s
        .http()
        .get(&url)
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = s
        .http()
        .patch(&url)
        .bearer_auth(s.admin_token())
        .header("If-Match", "\"stale\"")
        .json(&json!({"refresh_token_lifetime_days": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412);
    let r = s
        .http()
        .patch(&url)
        .bearer_auth(s.admin_token())
        .header("If-Match", &etag)
        .json(&json!({"refresh_token_lifetime_days": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);

    // A read-only token reads but cannot write.
    let (code, out, err) = s.cli(
        &["token", "create", "auditor", "--read-only", "--json"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let r = s
        .http()
        .get(&url)
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = s
        .http()
        .patch(&url)
        .bearer_auth(&secret)
        .json(&json!({"refresh_token_lifetime_days": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Audited with before and after.
    let (_, log) = s.api(reqwest::Method::GET, "audit", None).await;
    let e = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "PATCH /api/v1/cluster")
        .expect("audited");
    assert_eq!(e["before"]["refresh_token_lifetime_days"], 60);
    assert_eq!(e["after"]["refresh_token_lifetime_days"], 7);

    // The old OAuth-mode endpoint and CLI keep working on the same settings.
    s.oauth_mode(true);
    let (_, v) = s.api(reqwest::Method::GET, "cluster", None).await;
    assert_eq!(
        (
            v["oauth_mode"].as_bool(),
            v["refresh_token_lifetime_days"].as_i64()
        ),
        (Some(true), Some(7))
    );
}
