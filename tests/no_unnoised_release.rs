//! The second line behind the type-level gate on un-noised releases.
//!
//! The first line is in the types: with differential privacy on, a hospital
//! actor holds `HospitalLearner::Private`, whose learner yields only
//! `Noised` values, which only `models/src/privacy/mechanisms.rs` can make
//! (private fields, no `Deserialize`). What remains possible is to write a
//! new path around that: build the exact-release label, a wire update by
//! hand, or an open (exact) hospital learner somewhere new. This test counts
//! every spelling of those in the whole workspace — library code, test
//! modules, integration tests and benchmarks alike, so that aliases, glob
//! imports and code after a `#[cfg(test)]` are all seen — and fails when a
//! count differs from the reviewed table below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The tokens that make or label a release without a mechanism.
const TOKENS: [&str; 5] = [
    // The exact-release label (any alias or glob import still spells it).
    "NonPrivate",
    // A hospital trainer whose releases are exact.
    "HospitalLearner::Open",
    // The noised label, which must come from a `Noised` value.
    "Release::Noised",
    // A wire update built by hand (its label and contents must agree).
    "LocalUpdate {",
    // A count treated as released without a mechanism (it must come from the ledger).
    "count_released_before",
];

/// Reviewed: (file, token, count, why it cannot release un-noised data with DP on).
const REVIEWED: &[(&str, &str, usize, &str)] = &[
    (
        "models/src/privacy/mechanisms.rs",
        "count_released_before",
        1,
        "its definition",
    ),
    (
        "models/src/learner/private.rs",
        "count_released_before",
        3,
        "its import and PrivateLearner::release_count's two uses of the ledger's stored count",
    ),
    (
        "models/src/learner/mod.rs",
        "NonPrivate",
        2,
        "the label's definition and its doc",
    ),
    ("models/src/learner/mod.rs", "Release::Noised", 1, "is_noised()"),
    (
        "models/src/learner/mod.rs",
        "LocalUpdate {",
        1,
        "the struct's definition",
    ),
    (
        "models/src/learner/logistic.rs",
        "NonPrivate",
        1,
        "LogisticLearner::train: the open learner, a different type from DpLogisticLearner",
    ),
    (
        "models/src/learner/logistic.rs",
        "LocalUpdate {",
        1,
        "the same open train()",
    ),
    (
        "models/src/learner/columnar.rs",
        "NonPrivate",
        1,
        "ColumnarLearner::train: the open learner, a different type from DpColumnarLearner",
    ),
    (
        "models/src/learner/columnar.rs",
        "LocalUpdate {",
        1,
        "the same open train()",
    ),
    (
        "models/src/learner/cnn/mod.rs",
        "NonPrivate",
        1,
        "CnnLearner::train: the open learner, a different type from DpCnnLearner",
    ),
    (
        "models/src/learner/cnn/mod.rs",
        "LocalUpdate {",
        1,
        "the same open train()",
    ),
    (
        "models/src/learner/private.rs",
        "Release::Noised",
        1,
        "PrivateUpdate::into_message: the label copied from the Noised delta",
    ),
    (
        "models/src/learner/private.rs",
        "LocalUpdate {",
        2,
        "into_message builds it from a Noised delta; the doc line above it",
    ),
    (
        "actors/src/hospital/learner.rs",
        "HospitalLearner::Open",
        5,
        "the match arms that dispatch on the variant (privacy_spent and ledger_writes: an open learner has no ledger and reports None / 0)",
    ),
    (
        "actors/src/messages/wire.rs",
        "LocalUpdate {",
        1,
        "decoding at the coordinator: a received update's header, nothing leaves",
    ),
    (
        "actors/src/messages/samples.rs",
        "Release::Noised",
        1,
        "wire samples for the round-trip tests and the fuzz corpus; compiled only under cfg(test) or \
         the `samples` feature, which only medfed-fuzz enables",
    ),
    (
        "actors/src/messages/samples.rs",
        "LocalUpdate {",
        2,
        "wire samples (the sample's constructor and its signature); cfg(test) or the `samples` \
         feature only, which only medfed-fuzz enables",
    ),
    (
        "actors/src/coordinator/core_tests.rs",
        "LocalUpdate {",
        1,
        "unit tests of the pure core: an update as the coordinator receives it, built by the test",
    ),
    (
        "actors/src/coordinator/core_tests.rs",
        "NonPrivate",
        1,
        "the same test update's label (DP is off in these tests)",
    ),
    (
        "actors/tests/federation.rs",
        "HospitalLearner::Open",
        1,
        "test federations with DP off",
    ),
    (
        "actors/tests/imaging.rs",
        "HospitalLearner::Open",
        1,
        "a test federation with DP off",
    ),
    (
        "src/hospital_learner.rs",
        "HospitalLearner::Open",
        1,
        "build(): only in the privacy.mode = \"off\" branch",
    ),
    (
        "benches/cluster_transfer.rs",
        "NonPrivate",
        1,
        "a benchmark message between two test processes",
    ),
    (
        "benches/cluster_transfer.rs",
        "LocalUpdate {",
        1,
        "the same benchmark message",
    ),
    (
        "actors/src/messages/samples.rs",
        "NonPrivate",
        1,
        "the label of the masked-update sample (a real SecAgg round's words, no data); cfg(test) or the \
         `samples` feature only",
    ),
    (
        "actors/src/coordinator/task.rs",
        "NonPrivate",
        1,
        "the unmasked secure sum's mean, made on the coordinator for the strategy from what the \
         hospitals released (noised where DP is on); it never leaves the coordinator",
    ),
    (
        "actors/src/coordinator/task.rs",
        "LocalUpdate {",
        1,
        "the same mean of the secure sum",
    ),
    (
        "actors/tests/secure_aggregation.rs",
        "HospitalLearner::Open",
        1,
        "test federations with DP off over a secure sum",
    ),
    (
        "benches/secagg_cost.rs",
        "NonPrivate",
        2,
        "benchmark messages of a plain and a secure round (no data)",
    ),
    (
        "benches/secagg_cost.rs",
        "LocalUpdate {",
        1,
        "the plain round's benchmark update",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn releases_without_a_mechanism_appear_only_where_reviewed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let this = Path::new(file!()).file_name().unwrap();
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(files.len() > 60, "scanned too few files: {}", files.len());
    let mut found = BTreeMap::new();
    for file in files {
        if file.file_name() == Some(this) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        for token in TOKENS {
            let count = text.matches(token).count();
            if count > 0 {
                found.insert((rel.clone(), token.to_string()), count);
            }
        }
    }
    let reviewed: BTreeMap<(String, String), usize> = REVIEWED
        .iter()
        .map(|(f, t, n, _)| ((f.to_string(), t.to_string()), *n))
        .collect();
    assert_eq!(
        found, reviewed,
        "a release path without a mechanism was added or removed. A new one must be reviewed for \
         privacy and then listed in REVIEWED with the reason it cannot run with DP on."
    );
}

/// The gate itself: outside the mechanisms module nothing can construct a
/// `Noised` value (its fields are private), and nothing deserializes one.
#[test]
fn only_the_mechanisms_module_constructs_noised_values() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mechanisms = std::fs::read_to_string(root.join("models/src/privacy/mechanisms.rs")).unwrap();
    let definition = mechanisms
        .split("pub struct Noised<T> {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("Noised is defined in mechanisms.rs");
    for field in definition.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            !field.starts_with("pub"),
            "a public field makes Noised forgeable: {field}"
        );
    }
    let derive = mechanisms
        .split("pub struct Noised<T> {")
        .next()
        .and_then(|before| before.lines().rev().find(|l| l.contains("#[derive")))
        .unwrap_or("");
    assert!(
        !derive.contains("Deserialize"),
        "Noised must not be deserializable: {derive}"
    );
    assert!(
        !derive.contains("Default"),
        "Noised must have no default: {derive}"
    );
}
