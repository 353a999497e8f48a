//! A guard against anyone adding a code path that releases exact values.
//!
//! `Release::NonPrivate` marks something that leaves a hospital un-noised.
//! Only the reviewed non-private learners below may create it (they run only
//! with differential privacy off; with DP on, `PrivateLearner`
//! and the hospital actor refuse anything so marked, which tests elsewhere
//! exercise). This test fails when the marker appears anywhere else in the
//! non-test code, so that a new release path gets a deliberate review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reviewed: the non-private branches of the logistic learner (two) and of
/// the CNN learner (one); each runs only when the learner was built without
/// privacy, and then `round_cost()` is `None`, so `PrivateLearner::new`
/// refuses it: it cannot run with DP on.
const ALLOWED: [(&str, usize); 2] = [
    ("models/src/learner/cnn.rs", 1),
    ("models/src/learner/logistic.rs", 2),
];
const MARKER: &str = "Release::NonPrivate";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code before its test module (tests sit at the end of a file).
fn non_test_code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

#[test]
fn un_noised_releases_are_created_only_where_reviewed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["models/src", "actors/src", "src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "scanned too few files: {}", files.len());
    let mut found = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let count = non_test_code(&text).matches(MARKER).count();
        if count > 0 {
            let rel = file
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            found.insert(rel, count);
        }
    }
    let allowed: BTreeMap<String, usize> = ALLOWED.iter().map(|(f, n)| (f.to_string(), *n)).collect();
    assert_eq!(
        found, allowed,
        "{MARKER} is created outside the reviewed places. A new un-noised release path must be \
         reviewed for privacy and then listed in ALLOWED."
    );
}
