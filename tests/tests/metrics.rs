//! `/metrics` counters move with real traffic.

use sipreg_e2e::{Register, Server};

fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn metrics_count_successful_and_rejected_registers() {
    let s = Server::start().await;
    s.add_user_and_device("mia", "pw-mia", "CSFmia", &["1400"], true);
    s.oauth_mode(true);
    let scrape = || async {
        s.http()
            .get(format!("{}/metrics", s.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    assert!(before.contains("# TYPE sipreg_bindings gauge"), "{before}");
    assert_eq!(sample(&before, "sipreg_bindings"), 0);

    let token = s.password_token("mia", "pw-mia").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut c = s.sip_connect().await.unwrap();
    let r = c
        .request(
            &Register::new("1400", "m1", 1, c.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200);
    let r = c
        .request(
            &Register::new("1400", "m2", 1, c.local)
                .bearer("garbage.token.x")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 401);

    let after = scrape().await;
    assert_eq!(sample(&after, "sipreg_bindings"), 1, "{after}");
    assert_eq!(
        sample(&after, "sipreg_token_validations_total{outcome=\"ok\"}"),
        1,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "sipreg_token_validations_total{outcome=\"malformed\"}"
        ) >= 1,
        "{after}"
    );
    assert!(
        sample(&after, "sipreg_sip_responses_total{class=\"2xx\"}")
            > sample(&before, "sipreg_sip_responses_total{class=\"2xx\"}"),
        "{after}"
    );
    assert!(
        sample(&after, "sipreg_sip_responses_total{class=\"4xx\"}") >= 1,
        "{after}"
    );
    assert!(
        sample(&after, "process_resident_memory_bytes") > 1_000_000,
        "{after}"
    );
}
