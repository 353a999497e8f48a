//! Two real processes charging one ledger at the same time: the ledger's
//! lock makes each read-charge-write atomic, so no charge is lost and the
//! budget holds across both. The test re-runs this test binary as the
//! child processes (the `charging_child` test, which does nothing unless
//! the parent sets MEDFED_LEDGER_CHILD).

use std::process::Command;

use medfed_models::privacy::fingerprint::DataFingerprint;
use medfed_models::privacy::ledger::{Charge, Ledger, LedgerEntry, LedgerKey, Limit};
use medfed_models::privacy::rdp::{compose, default_orders};

const CHARGES: usize = 150;

fn key() -> LedgerKey {
    LedgerKey {
        dataset: "shared".into(),
        fingerprint: DataFingerprint::of_records((0..10u8).map(|i| vec![i])),
    }
}

fn entry(i: usize) -> LedgerEntry {
    LedgerEntry {
        unix_time: 0,
        run: format!("pid{}", std::process::id()),
        hospital: "h".into(),
        round: i as u32,
        mechanism: "dp-sgd".into(),
        sampling_rate: 1.0,
        noise_multiplier: 50.0,
        steps: 1,
        summed_with: None,
    }
}

#[test]
fn charging_child() {
    let Ok(dir) = std::env::var("MEDFED_LEDGER_CHILD") else {
        return;
    };
    let limit: f64 = std::env::var("MEDFED_LEDGER_LIMIT").unwrap().parse().unwrap();
    let cost = compose(1.0, 50.0, 1, &default_orders());
    let mut ledger = Ledger::open(std::path::Path::new(&dir), &key()).unwrap();
    let mut refused = 0;
    for i in 0..CHARGES {
        let charge = Charge {
            cost: &cost,
            entry: entry(i),
            count: None,
            collusion: None,
        };
        if ledger
            .charge(
                charge,
                Limit {
                    epsilon: limit,
                    delta: 1e-5,
                },
            )
            .is_err()
        {
            refused += 1;
        }
    }
    println!("refused {refused}");
}

fn run_two_children(dir: &std::path::Path, limit: f64) {
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args(["--exact", "charging_child", "--nocapture", "--test-threads", "1"])
            .env("MEDFED_LEDGER_CHILD", dir)
            .env("MEDFED_LEDGER_LIMIT", limit.to_string())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
}

#[test]
fn two_processes_on_one_ledger_lose_no_charge() {
    let dir = tempfile::tempdir().unwrap();
    run_two_children(dir.path(), 1e9);
    let ledger = Ledger::open(dir.path(), &key()).unwrap();
    assert_eq!(ledger.entries().len(), 2 * CHARGES, "charges were lost");
    let orders = default_orders();
    let one = compose(1.0, 50.0, 1, &orders);
    for ((spent, c), alpha) in ledger.spent_rdp().iter().zip(&one).zip(&orders) {
        let want = c * (2 * CHARGES) as f64;
        assert!(
            (spent - want).abs() <= 1e-9 * want,
            "order {alpha}: {spent} vs {want}"
        );
    }
}

#[test]
fn two_processes_on_one_ledger_stay_within_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    // About 50 charges fit; each process alone would try 150.
    let limit = 0.5;
    run_two_children(dir.path(), limit);
    let ledger = Ledger::open(dir.path(), &key()).unwrap();
    let spent = ledger.epsilon(1e-5);
    assert!(spent <= limit * (1.0 + 1e-9), "spent {spent} of {limit}");
    assert!(ledger.entries().len() > 1 && ledger.entries().len() < CHARGES);
    // Whatever was admitted was also recorded: one more would exceed it.
    let cost = compose(1.0, 50.0, 1, &default_orders());
    assert!(ledger.epsilon_after(&cost, 1e-5) > limit);
}
