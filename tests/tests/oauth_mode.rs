//! Cluster OAuth mode opens and closes the SIP OAuth port live; the config file follows; state and
//! tokens survive a restart.

use sipreg_e2e::{Register, Server};

#[tokio::test]
async fn oauth_mode_opens_and_closes_the_port_without_restart_and_the_config_file_follows() {
    let s = Server::start().await;
    s.add_user_and_device("alice", "pw", "CSFalice", &["1010"], true);

    assert!(
        s.sip_connect().await.is_err(),
        "OAuth mode is off by default: the port must refuse"
    );
    let (st, body) = s.config_file("CSFalice.cnf.xml").await;
    assert_eq!(st, 200);
    assert!(body.contains("<sipOAuthMode>0</sipOAuthMode>"), "{body}");
    assert!(
        body.contains(&format!(
            "<sipOAuthPort>{}</sipOAuthPort>",
            s.sip_oauth_port
        )),
        "{body}"
    );
    assert!(body.contains("<name>1010</name>"), "{body}");
    let (_, out, _) = s.cli(&["oauth-mode", "status"], None);
    assert!(out.contains("disabled"), "{out}");

    s.oauth_mode(true);
    let mut c = s
        .sip_connect()
        .await
        .expect("enabling opens the port at once");
    let r = c
        .request(&Register::new("1010", "m1", 1, c.local).build())
        .await
        .unwrap();
    assert_eq!(r.code, 401);
    let (_, body) = s.config_file("csfalice.cnf.xml").await;
    assert!(body.contains("<sipOAuthMode>1</sipOAuthMode>"), "{body}");
    let (_, out, _) = s.cli(&["oauth-mode", "status", "--json"], None);
    assert!(out.contains("\"enabled\": true"), "{out}");

    s.oauth_mode(false);
    assert!(
        s.sip_connect().await.is_err(),
        "disabling closes the port at once"
    );
    let r = c
        .request(&Register::new("1010", "m1", 2, c.local).build())
        .await;
    assert!(r.is_none(), "live connections are dropped too: {r:?}");
    let (_, body) = s.config_file("CSFalice.cnf.xml").await;
    assert!(body.contains("<sipOAuthMode>0</sipOAuthMode>"), "{body}");

    let (st, _) = s.config_file("CSFnobody.cnf.xml").await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn state_and_tokens_survive_a_restart() {
    let mut s = Server::start().await;
    s.add_user_and_device("erin", "pw-erin", "CSFerin", &["5000"], true);
    s.oauth_mode(true);
    let token = s.access_token("erin", "pw-erin").await;
    let jwks_before = s
        .http()
        .get(format!("{}/oauth/jwks.json", s.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    s.restart().await;

    let jwks_after = s
        .http()
        .get(format!("{}/oauth/jwks.json", s.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(jwks_before, jwks_after, "the signing key persists");
    let (_, out, _) = s.cli(&["device", "list"], None);
    assert!(out.contains("CSFerin") && out.contains("5000"), "{out}");
    let (_, out, _) = s.cli(&["user", "list"], None);
    assert!(out.contains("erin"), "{out}");
    let mut c = s
        .sip_connect()
        .await
        .expect("OAuth mode persisted: the port opens at start");
    let r = c
        .request(
            &Register::new("5000", "r1", 1, c.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(
        r.code, 200,
        "a token issued before the restart still registers: {}",
        r.text
    );
}
