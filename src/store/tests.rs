//! The store on real files: refusals that leave files untouched, a round
//! commit read back exactly, resumption, the registry and backups.

use std::collections::BTreeMap;
use std::sync::Arc;

use medfed_actors::coordinator::{RoundCommit, RoundStore, RunBegin, TaskTotals};
use medfed_actors::report::{FederatedEval, Participation, ParticipationOutcome};
use medfed_actors::RoundRecord;
use medfed_models::aggregate::StrategyState;
use medfed_models::checkpoint::Checkpoint;
use medfed_models::learner::{GlobalModel, PrivacySpent};
use medfed_models::metrics::binary_metrics;
use medfed_models::Params;

use super::*;

fn commit(run: &str, round: u32, value: f32, hospitals: &[(&str, ParticipationOutcome)]) -> RoundCommit {
    let participation = hospitals
        .iter()
        .map(|(h, outcome)| {
            let accepted = *outcome == ParticipationOutcome::Accepted;
            (
                h.to_string(),
                Participation {
                    outcome: *outcome,
                    reason: (!accepted).then(|| "update norm 1e6 exceeds the bound 100".to_string()),
                    samples: accepted.then_some(90),
                },
            )
        })
        .collect();
    RoundCommit {
        run_id: run.into(),
        task: "t".into(),
        target_rounds: 3,
        checkpoint: Checkpoint {
            task: "t".into(),
            round,
            model: GlobalModel {
                params: Arc::new(Params::single("w", vec![value, -0.0, 1e-7]).unwrap()),
                standardizer: None,
            },
        },
        strategy: StrategyState {
            strategy: "fedadam".into(),
            vectors: [
                ("m".to_string(), vec![0.1f32, 1.0 / 3.0]),
                ("v".to_string(), vec![1e-9, 2.0]),
            ]
            .into(),
        },
        record: RoundRecord {
            round,
            participants: 2,
            metrics: binary_metrics(&[0.9, 0.2, 0.7], &[true, false, false]),
            seconds: 0.5,
            seconds_with_evaluation: Some(0.75),
            federated: FederatedEval::default(),
            participation,
        },
        totals: TaskTotals {
            rejected: [("norm_too_large".to_string(), 1)].into(),
            declined: 0,
            departures: 0,
        },
        privacy: [(
            "h1".to_string(),
            PrivacySpent {
                mechanism: "dp-sgd".into(),
                noise_multiplier: 1.1,
                epsilon: 0.5 * f64::from(round),
                epsilon_collusion: None,
                budget: 3.0,
                delta: 1e-5,
                sampling_rate: None,
                steps_per_round: None,
                noise_share: None,
            },
        )]
        .into(),
    }
}

fn open(dir: &std::path::Path) -> Arc<Store> {
    Arc::new(Store::open(&dir.join("medfed.sqlite")).unwrap())
}

fn durable(store: &Arc<Store>) -> Durable {
    Durable::new(store.clone(), "fp-1".into(), "[run]\nseed = 1\n".into())
}

/// The settings `started` runs with instead of the configured ones.
fn run_settings() -> medfed_actors::TaskRunSettings {
    medfed_actors::TaskRunSettings {
        strategy: medfed_models::aggregate::StrategyConfig::named("median"),
        training: Some(medfed_actors::TrainingSettings {
            local_epochs: 3,
            batch_size: 8,
            learning_rate: 0.05,
            l2: 0.0,
        }),
        privacy: Some(medfed_models::learner::RunPrivacy {
            epsilon: Some(1.5),
            delta: None,
            noise_multiplier: None,
            rounds: 0,
        }),
    }
}

/// `durable(store)` after recording the start of `run` (task "t", 3 rounds).
fn started(store: &Arc<Store>, run: &str) -> Durable {
    let d = durable(store);
    d.begin(&RunBegin {
        run_id: run.into(),
        tasks: [("t".to_string(), 3)].into(),
        excluded: Vec::new(),
        settings: [("t".to_string(), run_settings())].into(),
    })
    .unwrap();
    d
}

const BOTH: [(&str, ParticipationOutcome); 2] = [
    ("h1", ParticipationOutcome::Accepted),
    ("h2", ParticipationOutcome::Rejected),
];

#[test]
fn garbage_truncated_and_foreign_files_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.sqlite");
    std::fs::write(&garbage, b"this is not a database at all, just text").unwrap();
    let e = Store::open(&garbage).err().unwrap().to_string();
    assert!(
        e.contains("not a medfed store") && e.contains("garbage.sqlite"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        b"this is not a database at all, just text"
    );

    // A real store with rounds in it, cut in half.
    let store = open(dir.path());
    let d = started(&store, "run-1");
    for round in 1..=3 {
        d.commit(&commit("run-1", round, 1.0, &BOTH)).unwrap();
    }
    // Closed (the write-ahead log checkpointed into the file).
    drop(d);
    drop(store);
    let whole = std::fs::read(dir.path().join("medfed.sqlite")).unwrap();
    let truncated = dir.path().join("truncated.sqlite");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let e = Store::open(&truncated)
        .err()
        .expect("a truncated store is refused")
        .to_string();
    assert!(
        e.contains("truncated.sqlite") && e.contains("left untouched"),
        "{e}"
    );
    assert_eq!(std::fs::read(&truncated).unwrap(), &whole[..whole.len() / 2]);
    let garbage_tail = dir.path().join("tail.sqlite");
    let mut bytes = whole.clone();
    for b in bytes.iter_mut().skip(100) {
        *b = 0xA5;
    }
    std::fs::write(&garbage_tail, &bytes).unwrap();
    let e = Store::open(&garbage_tail)
        .err()
        .expect("a damaged store is refused")
        .to_string();
    assert!(e.contains("left untouched"), "{e}");
    assert_eq!(std::fs::read(&garbage_tail).unwrap(), bytes);

    let foreign = dir.path().join("foreign.sqlite");
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    conn.execute_batch("CREATE TABLE patients (id INTEGER)").unwrap();
    drop(conn);
    let e = Store::open(&foreign).err().unwrap().to_string();
    assert!(e.contains("another application"), "{e}");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("medfed.sqlite");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", schema::VERSION + 1)
        .unwrap();
    drop(conn);
    let e = Store::open(&path).err().unwrap().to_string();
    assert!(e.contains("newer medfed"), "{e}");
}

#[test]
fn committed_rounds_resume_exactly_and_a_round_is_never_recorded_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.interrupted().unwrap().is_none());
    let d = started(&store, "run-1");
    d.commit(&commit("run-1", 1, 1.0, &BOTH)).unwrap();
    let second = commit("run-1", 2, 2.5, &BOTH);
    d.commit(&second).unwrap();
    // The same round again is an error, not a second record.
    assert!(d.commit(&second).is_err());

    let interrupted = store.interrupted().unwrap().expect("run-1 is interrupted");
    assert_eq!(interrupted.run_id, "run-1");
    assert_eq!(interrupted.fingerprint, "fp-1");
    assert_eq!(interrupted.tasks["t"], (3, 2));
    let point = store.resume_point("run-1").unwrap();
    let t = &point.tasks["t"];
    assert_eq!(t.target_rounds, 3);
    let (model, strategy) = t.committed.as_ref().unwrap();
    let bits = |p: &Params| p.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&model.params), bits(&second.checkpoint.model.params));
    assert_eq!(strategy, &second.strategy, "f32 moments round-trip exactly");
    assert_eq!(t.history.len(), 2);
    assert_eq!(t.history[1], second.record);
    assert_eq!(t.totals, second.totals);
    assert_eq!(t.privacy, second.privacy);
    // A resumed run carries on with the settings it was started with.
    assert_eq!(point.settings["t"], run_settings());

    store.abandon("run-1").unwrap();
    assert!(store.interrupted().unwrap().is_none());
    let e = store.abandon("run-1").unwrap_err().to_string();
    assert!(e.contains("no interrupted run 'run-1'"), "{e}");
}

#[test]
fn a_changed_model_file_is_refused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let c = commit("run-1", 1, 1.0, &BOTH);
    started(&store, "run-1").commit(&c).unwrap();
    let path = files::checkpoint_path(store.files_dir(), "run-1", "t", 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = store.resume_point("run-1").unwrap_err().to_string();
    assert!(e.contains("sha256") && e.contains("changed or damaged"), "{e}");
}

fn finish(store: &Arc<Store>, run: &str) {
    let id = run.to_string();
    store
        .writer()
        .unwrap()
        .call(move |tx| tx.execute("UPDATE runs SET status = 'finished' WHERE id = ?1", [id]))
        .unwrap();
}

#[test]
fn finished_runs_register_numbered_versions_with_their_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = started(&store, "run-1");
    for round in 1..=3 {
        d.commit(&commit("run-1", round, f32::from(round as u8), &BOTH))
            .unwrap();
    }
    finish(&store, "run-1");
    let v1 = store.register_run("run-1", "fp-1").unwrap();
    assert_eq!(v1.len(), 1);
    assert!(
        store.register_run("run-1", "fp-1").unwrap().is_empty(),
        "registered once"
    );
    let only_h1 = [("h1", ParticipationOutcome::Accepted)];
    let d = started(&store, "run-2");
    for round in 1..=3 {
        d.commit(&commit("run-2", round, 7.0, &only_h1)).unwrap();
    }
    let v2 = store.register_run("run-2", "fp-1").unwrap();
    let (v1, v2) = (&v1[0], &v2[0]);
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!((v1.run_id.as_str(), v1.round), ("run-1", 3));
    assert_eq!(v1.metrics["accuracy"], serde_json::json!(2.0 / 3.0));
    let bytes = store.model_bytes(v1).unwrap();
    assert_eq!(sha256_hex(&bytes), v1.sha256);
    let c = Checkpoint::from_bytes(&bytes, None).unwrap();
    assert_eq!(c.model.params.as_slice()[0], 3.0);
    assert_eq!(store.model("t", None).unwrap(), *v2);
    assert_eq!(store.model("t", Some(1)).unwrap(), *v1);
    let e = store.model("t", Some(9)).unwrap_err().to_string();
    assert!(e.contains("no registered model 't' (version 9)"), "{e}");
    assert_eq!(store.models(Some("t")).unwrap().len(), 2);
    assert!(store.models(Some("other")).unwrap().is_empty());

    let lineage = store.lineage(v1).unwrap();
    assert_eq!(lineage.rounds.len(), 3);
    let round_one: BTreeMap<&str, &str> = lineage.rounds[&1]
        .iter()
        .map(|c| (c.hospital.as_str(), c.outcome.as_str()))
        .collect();
    assert_eq!(round_one, [("h1", "accepted"), ("h2", "rejected")].into());
    assert_eq!(lineage.contributed_samples, [("h1".to_string(), 270)].into());
    let spent = &lineage.privacy["h1"];
    assert_eq!((spent.epsilon_after, spent.releases), (1.5, 3));
    assert_eq!(
        lineage.task_config,
        serde_json::Value::Null,
        "the test config has no tasks"
    );

    // h2's updates were all rejected: it contributed to nothing.
    assert_eq!(store.affected("h1").unwrap().len(), 2);
    assert!(store.affected("h2").unwrap().is_empty());
}

#[test]
fn a_backup_is_a_store_with_the_same_runs_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    started(&store, "run-1")
        .commit(&commit("run-1", 1, 1.0, &BOTH))
        .unwrap();
    let target = dir.path().join("backup.sqlite");
    store.backup(&target).unwrap();
    let copy = Store::open(&target).unwrap();
    assert_eq!(copy.interrupted().unwrap().unwrap().tasks["t"], (3, 1));
    let e = store.backup(&target).unwrap_err().to_string();
    assert!(e.contains("never overwrites"), "{e}");
}

#[test]
fn the_event_log_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .writer()
        .unwrap()
        .call(|tx| {
            tx.execute(
                "INSERT INTO events (run_id, at, type, body) VALUES ('r', 0, 'x', '{}')",
                [],
            )
        })
        .unwrap();
    let e = store
        .writer()
        .unwrap()
        .call(|tx| tx.execute("DELETE FROM events", []))
        .unwrap_err()
        .to_string();
    assert!(e.contains("append-only"), "{e}");
}

#[test]
fn one_process_writes_a_store_and_readers_read_it_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    started(&store, "run-1")
        .commit(&commit("run-1", 1, 1.0, &BOTH))
        .unwrap();
    let path = dir.path().join("medfed.sqlite");
    let e = Store::open(&path)
        .err()
        .expect("a second writer is refused")
        .to_string();
    assert!(e.contains("in use by another medfed process"), "{e}");
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.interrupted().unwrap().unwrap().tasks["t"], (3, 1));
    assert!(reader
        .abandon("run-1")
        .unwrap_err()
        .to_string()
        .contains("read only"));
    drop(store);
    Store::open(&path).expect("free again once the writer is gone");
    let e = Store::open_read_only(&dir.path().join("none.sqlite"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn a_finished_run_left_unregistered_is_registered_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = started(&store, "run-1");
    for round in 1..=3 {
        d.commit(&commit("run-1", round, 1.0, &BOTH)).unwrap();
    }
    finish(&store, "run-1");
    let late = store.register_unregistered().unwrap();
    assert_eq!(late.len(), 1);
    assert!(store.register_unregistered().unwrap().is_empty());
}
