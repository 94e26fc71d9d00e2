//! schemathesis (PyPI), a fuzzer no one here wrote, runs the OpenAPI document against a live server:
//! no 5xx, every status code and content type documented, every body matching its schema.

use sipreg_e2e::peers::have_peer;
use sipreg_e2e::Server;

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let found = have_peer(
        "schemathesis",
        std::process::Command::new("schemathesis").arg("--version"),
        "pip install schemathesis",
    );
    if !found {
        return;
    }
    let s = Server::start().await;
    s.add_user_and_device("seed", "pw-seed", "CSFseed", &["1300"], true);
    let token = s.admin_token();
    let (mut ok, mut report) = run_schemathesis(&s, &token).await;
    // Known open defect (see the issue notes): about one run in ten, one request of the ~2,500
    // meets a TLS EOF from the HTTPS listener ("Network Error" / "SSL verification problem").
    // Such a run, and only such a run (no check failed), is repeated once; the repeat must pass
    // in full, and the first report stays visible on stderr.
    if !ok && report.contains("Network Error") && !report.contains("failed") {
        eprintln!("schemathesis: network error only, repeating once; first report:\n{report}");
        (ok, report) = run_schemathesis(&s, &token).await;
    }
    assert!(
        ok,
        "schemathesis found problems:\n{report}\nserver log tail:\n{}",
        tail(&s.log())
    );
    assert!(
        report.contains("Tested:"),
        "schemathesis ran operations: {report}"
    );
}

/// One schemathesis run against `s`: whether it passed, and its whole report.
async fn run_schemathesis(s: &Server, token: &str) -> (bool, String) {
    let work = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("schemathesis")
        .current_dir(work.path())
        .args(["run", &format!("{}/api/v1/openapi.json", s.base())])
        .args(["--tls-verify", s.data_dir.join("tls/ca.pem").to_str().unwrap()])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "1", "--workers", "2"])
        .args(["--request-timeout", "20", "--no-color"])
        .output()
        .await
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}
