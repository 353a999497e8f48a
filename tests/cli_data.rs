//! `medfed data`: the SYNTHETIC chest-X-ray generator in both layouts, and
//! loading them back as training would, with unreadable files reported.

mod common;
use common::medfed;

use serde_json::Value;

fn check(path: &str, format: &str, split: &str) -> Value {
    let out = medfed(
        &[
            "data",
            "check-images",
            "--path",
            path,
            "--format",
            format,
            "--split",
            split,
            "--size",
            "32",
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn synthetic_folder_loads_back_and_corrupt_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chest_xray");
    let root_s = root.to_str().unwrap();
    let out = medfed(
        &[
            "data",
            "synth-xray",
            "--out",
            root_s,
            "--count",
            "60",
            "--size",
            "48",
            "--format",
            "folder",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SYNTHETIC"));
    assert!(std::fs::read_to_string(root.join("SYNTHETIC.txt"))
        .unwrap()
        .contains("not patient data"));
    let v = check(root_s, "folder", "train");
    assert_eq!(v["images"], 42);
    assert_eq!(
        v["normal"].as_u64().unwrap() + v["pneumonia"].as_u64().unwrap(),
        42
    );
    assert!(v["skipped"].as_array().unwrap().is_empty());
    // A corrupt JPEG is skipped and named; nothing else is lost.
    std::fs::write(root.join("train/NORMAL/corrupt.jpeg"), b"\xff\xd8\xff garbage").unwrap();
    let v = check(root_s, "folder", "train");
    assert_eq!(v["images"], 42);
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["file"].as_str().unwrap().ends_with("corrupt.jpeg"));
    // Writing into a non-empty folder is refused.
    let again = medfed(&["data", "synth-xray", "--out", root_s, "--count", "10"], &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

#[test]
fn synthetic_npz_loads_back_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pneumoniamnist.npz");
    let path_s = path.to_str().unwrap();
    let out = medfed(
        &[
            "data",
            "synth-xray",
            "--out",
            path_s,
            "--count",
            "40",
            "--size",
            "28",
            "--format",
            "npz",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(check(path_s, "npz", "train")["images"], 28);
    assert_eq!(check(path_s, "npz", "test")["images"], 6);
    let bad = medfed(
        &[
            "data",
            "check-images",
            "--path",
            path_s,
            "--format",
            "npz",
            "--split",
            "holdout",
        ],
        &[],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no array 'holdout_images'") && err.contains("train_images"),
        "{err}"
    );
    let missing = medfed(
        &["data", "check-images", "--path", "nope.npz", "--format", "npz"],
        &[],
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.npz"));
    let size = medfed(&["data", "synth-xray", "--out", "x", "--size", "4"], &[]);
    assert!(String::from_utf8_lossy(&size.stderr).contains("--size"));
}
