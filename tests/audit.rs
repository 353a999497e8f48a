//! The audit log of a real `medfed serve`: who started which run with which
//! settings, failed authentications, hospitals admitted, the run's end; and
//! `medfed audit verify` on it, intact, with an edited line, a deleted line
//! and a cut-off end (found through the store's copy).

use std::time::Duration;

mod common;
use common::medfed;
use common::server::Served;

use serde_json::{json, Value};

fn verify(data: &std::path::Path) -> (bool, String) {
    let data = data.display().to_string();
    let out = medfed(&["audit", "verify"], &[("MEDFED_RUN__DATA_DIR", &data)]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn serve_keeps_a_tamper_evident_audit_log_that_verify_checks() {
    let data = tempfile::tempdir().unwrap();
    let mut s = Served::start_in(data.path(), &["--task", "breast_cancer"], &[]);
    let id = s.start_run(&json!({ "rounds": 2 }));
    s.wait_run_ended(&id, Duration::from_secs(120));
    let wrong = reqwest::blocking::Client::new()
        .get(s.url("/api/state"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    s.terminate();
    s.wait_exit(Duration::from_secs(60));

    let file = data.path().join("audit-serve.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let entries: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "hospital_admitted").count(),
        5,
        "{actions:?}"
    );
    let request = entries
        .iter()
        .find(|e| e["action"] == "run_start_requested")
        .expect("the start is audited");
    assert_eq!(request["actor"], "api token from 127.0.0.1");
    assert_eq!(request["details"]["rounds"], 2);
    assert_eq!(request["details"]["run"], id.as_str());
    for action in ["run_started", "run_ended", "auth_failed"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let failed = entries.iter().find(|e| e["action"] == "auth_failed").unwrap();
    assert_eq!(failed["details"]["reason"], "wrong_token");
    assert!(
        !text.contains("wrong-token-0123456789"),
        "tokens are never recorded"
    );

    let (ok, out) = verify(data.path());
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "{} entries, chain intact; the store kept {} of them",
            entries.len(),
            entries.len()
        )),
        "{out}"
    );

    // An edited line.
    let edited = text.replacen("\"rounds\":2", "\"rounds\":3", 1);
    assert_ne!(edited, text);
    std::fs::write(&file, &edited).unwrap();
    let (ok, out) = verify(data.path());
    assert!(!ok, "{out}");
    let line = actions.iter().position(|a| *a == "run_start_requested").unwrap() + 1;
    assert!(
        out.contains(&format!(
            "broken at line {line}: its content does not match its hash"
        )),
        "{out}"
    );

    // A deleted line.
    let lines: Vec<&str> = text.lines().collect();
    let without: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(&file, without.join("\n") + "\n").unwrap();
    let (ok, out) = verify(data.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("broken at line 3: it does not follow the line before it"),
        "{out}"
    );

    // The last line cut off: the chain alone cannot tell, the store can.
    std::fs::write(&file, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let (ok, out) = verify(data.path());
    assert!(!ok, "{out}");
    assert!(out.contains("is in the store but not in the file"), "{out}");

    // Restored, it verifies again.
    std::fs::write(&file, &text).unwrap();
    assert!(verify(data.path()).0);
}
