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
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\nserver log tail:\n{}",
        tail(&s.log())
    );
    assert!(
        report.contains("Tested:"),
        "schemathesis ran operations: {report}"
    );
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
