//! External peers (sipp, openssl, curl, python3 modules...) the tests drive: whether one is
//! present, and what to do when it is not — skip with a message, or fail under `CI=true`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::peers_required;

/// The verdict on a peer that was probed: `found` as is, after failing the test when it is
/// missing under `CI=true` or printing a `SKIP:` line otherwise. `install` says how to get it.
pub fn require_peer(name: &str, found: bool, install: &str) -> bool {
    if !found {
        assert!(
            !peers_required(),
            "{name} is required under CI=true ({install})"
        );
        eprintln!("SKIP: {name} is not installed ({install})");
    }
    found
}

/// Whether `probe` runs and exits 0 (see [`require_peer`] for what a missing peer does).
pub fn have_peer(name: &str, probe: &mut Command, install: &str) -> bool {
    let found = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    require_peer(name, found, install)
}

/// Whether `program arg` can be started at all, whatever its exit code (some peers, like
/// `sipp -v`, exit non-zero on a version query); see [`require_peer`] for a missing one.
pub fn have_program(program: &str, arg: &str, install: &str) -> bool {
    let found = Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    require_peer(program, found, install)
}

/// Whether `tool` is on the PATH (`command -v`), for peers with no harmless version flag; see
/// [`require_peer`] for a missing one.
pub fn have_tool(tool: &str, install: &str) -> bool {
    have_peer(
        tool,
        Command::new("sh").args(["-c", &format!("command -v {tool}")]),
        install,
    )
}

/// Whether python3 with PyJWT and cryptography is present; see [`require_peer`] for a missing one.
pub fn have_pyjwt() -> bool {
    have_peer(
        "PyJWT",
        Command::new("python3").args(["-c", "import jwt, cryptography"]),
        "pip install pyjwt cryptography",
    )
}

/// Runs `python3 args...`, asserting it exits 0 (`what` names it in the failure); returns its
/// stdout.
pub fn python(what: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new("python3").args(args).output().unwrap();
    assert_success(what, &out);
    out.stdout
}

/// Runs `python3 -c script` with `input` on its stdin, asserting it exits 0 (`what` names it in
/// the failure); returns its stdout.
pub fn python_stdin(what: &str, script: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_success(what, &out);
    out.stdout
}

/// Asserts a finished peer exited 0, showing its stderr otherwise.
pub fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// sipp's stdout followed by the `*_errors.log` / `*_messages.log` traces it left in `dir`
/// (`-trace_err -trace_msg`), so a failed scenario shows what was exchanged.
pub fn sipp_log(stdout: &[u8], dir: &Path) -> String {
    let mut log = String::from_utf8_lossy(stdout).into_owned();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("_errors.log") || name.ends_with("_messages.log") {
            log.push_str(&format!(
                "\n--- {name}\n{}",
                std::fs::read_to_string(e.path()).unwrap_or_default()
            ));
        }
    }
    log
}
