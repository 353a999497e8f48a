//! Robust aggregation and adversary simulation with the real binary on the
//! breast-cancer federation (5 hospitals, the demo's sorted partition).

mod common;

use common::{json_of, medfed};
use serde_json::Value;

const TASK: &str = "breast_cancer";

fn run(extra: &[&str]) -> Value {
    let mut args = vec!["run", "--task", TASK, "--json"];
    args.extend_from_slice(extra);
    json_of(&medfed(&args, &[]))
}

fn task(run: &Value) -> &Value {
    &run["tasks"][TASK]
}

fn final_accuracy(run: &Value) -> f64 {
    task(run)["final"]["accuracy"].as_f64().expect("a final accuracy")
}

fn error_of(args: &[&str]) -> String {
    let out = medfed(args, &[]);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_sign_flipping_hospital_wrecks_fedavg_but_not_the_robust_strategies() {
    let attack = ["--attack", "sign_flip:breast_cancer-3:10"];
    let clean = final_accuracy(&run(&[]));
    let fedavg = run(&attack);
    assert_eq!(
        task(&fedavg)["attacks"],
        serde_json::json!({ "breast_cancer-3": "sign_flip:10" }),
        "the results record who attacked and how"
    );
    let attacked = final_accuracy(&fedavg);
    for strategy in ["median", "trimmed_mean", "krum", "multi_krum"] {
        let robust = final_accuracy(&run(&[&attack[..], &["--strategy", strategy]].concat()));
        eprintln!("{strategy}: {robust:.4} (FedAvg attacked {attacked:.4}, clean {clean:.4})");
        assert!(
            robust > attacked + 0.1,
            "{strategy} {robust} vs FedAvg {attacked}"
        );
        assert!(robust > clean - 0.1, "{strategy} {robust} vs clean {clean}");
    }
}

#[test]
fn non_finite_updates_are_rejected_at_intake_and_count_as_missing() {
    for strategy in ["fedavg", "median"] {
        let run = run(&[
            "--strategy",
            strategy,
            "--rounds",
            "4",
            "--attack",
            "nan:breast_cancer-2",
        ]);
        let t = task(&run);
        // Refused before aggregation every round; the quorum (4 of 5) holds.
        assert_eq!(t["status"], "finished", "{t}");
        assert_eq!(t["rejected"]["non_finite"], 4, "{t}");
        let participants: Vec<u64> = t["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["participants"].as_u64().unwrap())
            .collect();
        assert_eq!(participants, vec![4; 4]);
        assert!(final_accuracy(&run) > 0.9, "{strategy}");
    }
}

#[test]
fn every_strategy_trains_the_federation() {
    for strategy in [
        "fedavg",
        "fedprox",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "median",
        "trimmed_mean",
        "krum",
        "multi_krum",
    ] {
        let run = run(&["--strategy", strategy]);
        assert_eq!(task(&run)["status"], "finished", "{strategy}");
        let accuracy = final_accuracy(&run);
        eprintln!("{strategy}: {accuracy:.4}");
        assert!(accuracy > 0.85, "{strategy}: {accuracy}");
    }
    // Bulyan tolerating f = 1 needs 4f + 3 = 7 hospitals.
    let run = run(&["--strategy", "bulyan", "--hospitals", "7"]);
    assert_eq!(task(&run)["status"], "finished");
    assert!(final_accuracy(&run) > 0.85);
}

#[test]
fn impossible_strategies_and_attacks_are_refused_by_name() {
    let e = error_of(&["run", "--task", TASK, "--strategy", "bulyan"]);
    assert!(
        e.contains("`tasks.breast_cancer.strategy.f`")
            && e.contains("n >= 4f + 3 = 7 hospitals; the task has 5"),
        "{e}"
    );
    let e = error_of(&["run", "--task", TASK, "--strategy", "krum", "--hospitals", "4"]);
    assert!(e.contains("n >= 2f + 3 = 5 hospitals; the task has 4"), "{e}");
    let e = error_of(&["run", "--task", TASK, "--strategy", "fedsgd"]);
    assert!(
        e.contains("unknown strategy 'fedsgd'") && e.contains("multi_krum"),
        "{e}"
    );
    let e = error_of(&["run", "--task", TASK, "--attack", "flip:breast_cancer-1"]);
    assert!(e.contains("unknown kind 'flip'"), "{e}");
    let e = error_of(&["run", "--task", TASK, "--attack", "scale:breast_cancer-9:10"]);
    assert!(
        e.contains("`tasks.breast_cancer.attack.breast_cancer-9`") && e.contains("no such hospital"),
        "{e}"
    );
    let e = error_of(&["run", "--task", TASK, "--attack", "scale:nobody:10"]);
    assert!(e.contains("no task has a hospital 'nobody'"), "{e}");
    let e = error_of(&["run", "--task", TASK, "--attack", "scale"]);
    assert!(e.contains("expected KIND:HOSPITAL[:FACTOR]"), "{e}");
}

#[test]
fn partition_errors_name_the_task_the_set_and_the_numbers() {
    let e = error_of(&["run", "--task", TASK, "--hospitals", "1000"]);
    assert!(
        e.contains("task 'breast_cancer'")
            && e.contains("partitioning the training set (456 examples) into 1000 hospitals")
            && e.contains("456 rows cannot give each of 1000 hospitals a row"),
        "{e}"
    );
    // More hospitals than held-out rows: some have no local test split and
    // decline federated evaluation; the run goes on.
    let run = run(&["--hospitals", "200", "--partition", "iid", "--rounds", "2"]);
    let t = task(&run);
    assert_eq!(t["status"], "finished", "{t}");
    let declined = t["final_federated"]["declined"].as_object().unwrap();
    assert_eq!(declined.len(), 200 - 113, "{t}");
    assert!(declined
        .values()
        .all(|r| r.as_str().unwrap().contains("no local test split")));
    assert_eq!(t["final_federated"]["examples"], 113);
}
