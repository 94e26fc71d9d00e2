//! Operator-facing diagnostics of refused REGISTERs: exactly one log line per rejection, naming
//! the failed check, device, user and AOR, and never the token.

use sipreg_e2e::{Register, Server};

#[tokio::test]
async fn a_rejected_register_logs_one_line_with_the_check_and_without_the_token() {
    let s = Server::start().await;
    s.add_user_and_device("alice", "pw", "CSFalice", &["1010"], true);
    s.add_user_and_device("bob", "pw-bob", "CSFbob", &["2020"], true);
    s.oauth_mode(true);
    let token = s.password_token("bob", "pw-bob").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

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
