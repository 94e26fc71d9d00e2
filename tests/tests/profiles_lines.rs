//! Operator-facing diagnostics of refused REGISTERs: exactly one log line per rejection, naming
//! the failed check, device, user and AOR, and never the token.

use sipreg_e2e::{Register, Server};

#[tokio::test]
async fn a_rejected_register_logs_one_line_with_the_check_and_without_the_token() {
    let s = Server::start().await;
    s.add_user_and_device("alice", "pw", "CSFalice", &["1010"], true);
    s.add_user_and_device("bob", "pw-bob", "CSFbob", &["2020"], true);
    s.oauth_mode(true);
    let token = s.access_token("bob", "pw-bob").await;

    let mut sip = s.sip_connect().await.unwrap();
    // The challenge that starts authentication is not a rejection.
    let r = sip
        .request(&Register::new("1010", "log1", 1, sip.local).build())
        .await
        .unwrap();
    assert_eq!(r.code, 401);
    // Bob's valid token for Alice's line: refused by the line check.
    let r = sip
        .request(
            &Register::new("1010", "log1", 2, sip.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 403);
    // A garbage token: refused by the token check.
    let r = sip
        .request(
            &Register::new("2020", "log2", 1, sip.local)
                .bearer("not.a.token")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 401);

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = s.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("REGISTER rejected"))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "one line per rejection:\n{}",
        lines.join("\n")
    );
    assert!(
        lines[0].contains("line_not_on_device") && lines[0].contains("bob"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("1010@localhost") && lines[0].contains("403"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("token_invalid"), "{}", lines[1]);
    assert!(!log.contains(&token), "the token must never be logged");
    assert!(!log.contains("not.a.token"), "nor a bad one");
}

/// A request with the admin token and optional If-Match; returns status, ETag, headers and JSON.
async fn call(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    if_match: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, String, reqwest::header::HeaderMap, serde_json::Value) {
    let mut req = s
        .http()
        .request(method, format!("{}/api/v1/{path}", s.base()))
        .bearer_auth(s.admin_token());
    if let Some(m) = if_match {
        req = req.header("If-Match", m);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let etag = headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.unwrap();
    (
        status,
        etag,
        headers,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

const LAB: &str = "Lab No OAuth";
const LAB_PATH: &str = "security-profiles/Lab%20No%20OAuth";
const OAUTH_DEFAULT: &str = "Universal Device Template - OAuth Security Profile";

#[tokio::test]
async fn security_profiles_drive_oauth_registration_live() {
    use reqwest::Method;
    use serde_json::json;
    let s = Server::start().await;

    let (st, _, _, v) = call(&s, Method::GET, "security-profiles", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(v.as_array().unwrap().len(), 3, "three seeded: {v}");
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == OAUTH_DEFAULT && p["oauth"] == true));

    let new = json!({"name": LAB, "description": "lab phones", "oauth": false,
        "digest": true, "transport": "tcp+tls"});
    let (st, _, _, v) = call(
        &s,
        Method::POST,
        "security-profiles",
        None,
        Some(new.clone()),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["transport"], "tcp+tls");
    let (st, _, _, _) = call(&s, Method::POST, "security-profiles", None, Some(new)).await;
    assert_eq!(st, 409);
    let (st, _, _, v) = call(
        &s,
        Method::POST,
        "security-profiles",
        None,
        Some(json!({"name": "x", "transport": "carrier-pigeon"})),
    )
    .await;
    assert!(st == 400 || st == 422, "{st} {v}");
    let (code, out, err) = s.cli(&["profile", "list"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(LAB), "{out}");

    // A device on the no-OAuth profile, with a model, through the CLI.
    let (code, _, err) = s.cli(&["user", "add", "carol"], Some("pw-carol\n"));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = s.cli(
        &[
            "device",
            "add",
            "CSFcarol",
            "--owner",
            "carol",
            "--line",
            "3030",
            "--profile",
            LAB,
            "--model",
            "Cisco Jabber",
            "--json",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (st, _, _, d) = call(&s, Method::GET, "devices/CSFcarol", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(
        (
            d["profile"].as_str(),
            d["model"].as_str(),
            d["oauth"].as_bool()
        ),
        (Some(LAB), Some("Cisco Jabber"), Some(false)),
        "{d}"
    );
    // Unknown profile, or an `oauth` contradicting the profile: 422 naming the field.
    let (st, _, _, v) = call(
        &s,
        Method::POST,
        "devices",
        None,
        Some(json!({"name": "CSFx", "owner": "carol", "lines": ["3031"], "profile": "Nope"})),
    )
    .await;
    assert_eq!((st, v["field"].as_str()), (422, Some("profile")), "{v}");
    let (st, _, _, v) = call(
        &s,
        Method::POST,
        "devices",
        None,
        Some(json!({"name": "CSFx", "owner": "carol", "lines": ["3031"], "profile": LAB, "oauth": true})),
    )
    .await;
    assert_eq!((st, v["field"].as_str()), (422, Some("oauth")), "{v}");
    // Older clients: `oauth: true` without a profile maps to the default OAuth profile.
    let (st, _, _, v) = call(
        &s,
        Method::POST,
        "devices",
        None,
        Some(json!({"name": "CSFcarol2", "owner": "carol", "lines": ["3032"], "oauth": true})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (v["profile"].as_str(), v["oauth"].as_bool()),
        (Some(OAUTH_DEFAULT), Some(true))
    );
    assert_eq!(v["model"], "Cisco Unified Client Services Framework");

    // The registrar enforces the profile: OAuth off → the port-mismatch 403 naming the profile.
    s.oauth_mode(true);
    let token = s.access_token("carol", "pw-carol").await;
    let mut sip = s.sip_connect().await.unwrap();
    let r = sip
        .request(
            &Register::new("3030", "prof1", 1, sip.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 403);
    let warnings = r.headers("Warning").join(" | ");
    assert!(
        warnings.contains("SIP OAuth Registration port Mismatch") && warnings.contains(LAB),
        "{warnings}"
    );

    // PATCH the profile (If-Match) to enable OAuth: the next REGISTER succeeds.
    let (_, etag, _, _) = call(&s, Method::GET, LAB_PATH, None, None).await;
    let (st, _, _, _) = call(
        &s,
        Method::PATCH,
        LAB_PATH,
        Some("\"stale\""),
        Some(json!({"oauth": true})),
    )
    .await;
    assert_eq!(st, 412);
    let (st, _, _, v) = call(
        &s,
        Method::PATCH,
        LAB_PATH,
        Some(&etag),
        Some(json!({"oauth": true})),
    )
    .await;
    assert_eq!((st, v["oauth"].as_bool()), (200, Some(true)), "{v}");
    let (_, _, _, d) = call(&s, Method::GET, "devices/CSFcarol", None, None).await;
    assert_eq!(d["oauth"], true, "the device follows its profile: {d}");
    let r = sip
        .request(
            &Register::new("3030", "prof1", 2, sip.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200);

    // In use: 409; once no device uses it, the CLI removes it.
    let (st, _, _, v) = call(&s, Method::DELETE, LAB_PATH, None, None).await;
    assert_eq!(st, 409, "{v}");
    let (code, _, err) = s.cli(
        &["device", "set", "CSFcarol", "--profile", OAUTH_DEFAULT],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = s.cli(&["profile", "remove", LAB], None);
    assert_eq!(code, 0, "{err}");
    let (st, _, _, _) = call(&s, Method::GET, LAB_PATH, None, None).await;
    assert_eq!(st, 404);
    let log = s.log();
    assert!(
        log.contains("profile_no_oauth"),
        "the refused REGISTER was logged with its check"
    );
}

#[tokio::test]
async fn lines_are_listed_filtered_shown_and_renamed_on_every_device() {
    use reqwest::Method;
    use serde_json::json;
    let s = Server::start().await;
    s.add_user_and_device("dan", "pw", "CSFdan", &["4000", "4001"], true);
    let (code, _, err) = s.cli(
        &[
            "device", "add", "SEPdan", "--owner", "dan", "--line", "4000",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    s.add_user_and_device("erin", "pw", "CSFerin", &["5000"], false);

    let (st, _, h, v) = call(&s, Method::GET, "lines", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(h["x-total-count"], "3");
    let dns: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["dn"].as_str().unwrap())
        .collect();
    assert_eq!(dns, ["4000", "4001", "5000"]);
    let (_, _, _, v) = call(&s, Method::GET, "lines?dn=40", None, None).await;
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let (_, _, _, v) = call(&s, Method::GET, "lines?owner=erin", None, None).await;
    assert_eq!(v[0]["dn"], "5000", "{v}");
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (_, _, _, v) = call(&s, Method::GET, "lines?device=sepdan", None, None).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let (_, _, h, v) = call(&s, Method::GET, "lines?dn=40&limit=1", None, None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    let link = h["link"].to_str().unwrap();
    assert!(
        link.contains("offset=1") && link.contains("dn=40"),
        "{link}"
    );

    let (st, etag, _, v) = call(&s, Method::GET, "lines/4000", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(v["devices"].as_array().unwrap().len(), 2, "{v}");
    let (st, _, _, _) = call(&s, Method::GET, "lines/9999", None, None).await;
    assert_eq!(st, 404);

    let patch = json!({"display_name": "Dan Desk"});
    let (st, _, _, _) = call(
        &s,
        Method::PATCH,
        "lines/4000",
        Some("\"stale\""),
        Some(patch.clone()),
    )
    .await;
    assert_eq!(st, 412);
    let (st, _, _, v) = call(&s, Method::PATCH, "lines/4000", Some(&etag), Some(patch)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["display_name"], "Dan Desk");
    for name in ["CSFdan", "SEPdan"] {
        let (_, _, _, d) = call(&s, Method::GET, &format!("devices/{name}"), None, None).await;
        assert_eq!(d["lines"][0]["display_name"], "Dan Desk", "{d}");
    }
    let (_, _, _, d) = call(&s, Method::GET, "devices/CSFdan", None, None).await;
    assert!(
        d["lines"][1]["display_name"].is_null(),
        "4001 untouched: {d}"
    );

    let (code, out, err) = s.cli(&["line", "list", "--dn", "40"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("4000") && out.contains("Dan Desk") && !out.contains("5000"),
        "{out}"
    );
    let (code, out, err) = s.cli(&["line", "set", "5000", "--display-name", "Erin"], None);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.cli(&["line", "show", "5000", "--json"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"Erin\"") && out.contains("CSFerin"), "{out}");
}
