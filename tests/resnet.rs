//! ResNet-18 imaging hospitals with the real `medfed` binary, on SYNTHETIC
//! 64x64 chest-X-ray-like images (generated; not patient data): three
//! hospitals, three rounds, in one process and as four processes (the
//! 11M-parameter model crossing the cluster wire every round), checkpoints
//! that load back bit for bit, an initial model from a safetensors file,
//! and the configs that cannot work refused by key. Kept short: few images,
//! one local epoch.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{shard_hospital, spawn};
use common::{free_port, json_of, medfed};
use medfed_models::checkpoint::Checkpoint;
use medfed_models::data::images::npz;
use medfed_models::learner::cnn::{Arch, CnnConfig, CnnEvaluator};
use medfed_models::learner::Evaluator;
use serde_json::Value;

const TASK: &str = "xray";

fn cnn() -> CnnConfig {
    CnnConfig {
        arch: Arch::Resnet18,
        size: 64,
        ..CnnConfig::default()
    }
}

/// A SYNTHETIC `.npz` (80 images: 56 to train, 24 held out) in `dir`, and
/// a config with one ResNet-18 task of 3 hospitals reading it; `model`
/// goes into `[tasks.xray.model]`.
fn resnet_config(dir: &Path, model: &str) -> PathBuf {
    let data = dir.join("set.npz");
    if !data.exists() {
        let out = medfed(
            &[
                "data",
                "synth-xray",
                "--out",
                data.to_str().unwrap(),
                "--count",
                "80",
                "--size",
                "64",
                "--seed",
                "3",
                "--format",
                "npz",
            ],
            &[],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = format!(
        r#"
[run]
seed = 5
rounds = 3

[tasks.{TASK}]
kind = "imaging"
hospitals = 3

[tasks.{TASK}.data]
format = "npz"
path = {data:?}
image_size = 64

[tasks.{TASK}.model]
arch = "resnet18"
{model}

[tasks.{TASK}.training]
local_epochs = 1
batch_size = 16
learning_rate = 0.001
"#
    );
    let path = dir.join("resnet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn rounds(run: &Value) -> Vec<Value> {
    run["tasks"][TASK]["rounds"].as_array().expect("rounds").clone()
}

/// The in-process run writes a checkpoint per round; each loads back with
/// ResNet-18's layout, writes back to the same bytes, and evaluates on the
/// held-out set to exactly the metrics the run reported; the saved model
/// is the last checkpoint.
#[test]
fn resnet18_hospitals_federate_and_their_checkpoints_load_back_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let config = resnet_config(dir.path(), "");
    let (checkpoints, models) = (dir.path().join("ck"), dir.path().join("models"));
    let out = medfed(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--json",
            "--checkpoint-dir",
            checkpoints.to_str().unwrap(),
            "--save-model",
            models.to_str().unwrap(),
        ],
        &[],
    );
    let run = json_of(&out);
    let rounds = rounds(&run);
    assert_eq!(rounds.len(), 3);
    let layout = cnn().layout();
    let (held_out, _) = npz::load(&dir.path().join("set.npz"), "test", 64).unwrap();
    let mut evaluator = CnnEvaluator::new(held_out, cnn(), 5).unwrap();
    let mut previous = evaluator.init_params();
    for r in &rounds {
        assert_eq!(r["participants"], 3, "{r}");
        let round = r["round"].as_u64().unwrap() as u32;
        let path = checkpoints.join(TASK).join(Checkpoint::file_name(round));
        let bytes = std::fs::read(&path).unwrap();
        let c = Checkpoint::load(&path, Some(&layout)).unwrap();
        assert_eq!(c.model.params.as_slice().len(), 11_170_753);
        assert_ne!(*c.model.params, previous, "round {round} trained nothing");
        let again = dir.path().join("again.safetensors");
        c.save(&again).unwrap();
        assert_eq!(
            std::fs::read(&again).unwrap(),
            bytes,
            "round {round}: not bit for bit"
        );
        let m = evaluator.evaluate(&c.model).unwrap();
        assert_eq!(
            m.accuracy.to_bits(),
            r["accuracy"].as_f64().unwrap().to_bits(),
            "round {round}"
        );
        assert_eq!(
            m.loss.to_bits(),
            r["loss"].as_f64().unwrap().to_bits(),
            "round {round}"
        );
        previous = (*c.model.params).clone();
    }
    let last = checkpoints.join(TASK).join(Checkpoint::file_name(3));
    let saved = Checkpoint::load(&models.join(format!("{TASK}.safetensors")), Some(&layout)).unwrap();
    assert_eq!(saved, Checkpoint::load(&last, Some(&layout)).unwrap());
}

/// One coordinator and three hospital processes: every round's held-out
/// metrics are bit-identical to the in-process run's, with each round's
/// models (45 MB) on the sessions' direct streams.
#[test]
fn resnet18_hospitals_as_processes_reproduce_the_in_process_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = resnet_config(dir.path(), "");
    let cfg = config.to_str().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let coordinator = spawn(
        dir.path(),
        "coordinator",
        &[
            "coordinator",
            "--config",
            cfg,
            "--task",
            TASK,
            "--listen",
            &addr,
            "--auto-start",
            "--exit-after-run",
            "--json",
        ],
        &[],
    );
    coordinator.wait_for(
        &["coordinator listening for hospitals"],
        1,
        Duration::from_secs(60),
    );
    let _hospitals: Vec<_> = (1..=3)
        .map(|i| {
            shard_hospital(
                dir.path(),
                &format!("h{i}"),
                TASK,
                &addr,
                &format!("{i}/3"),
                &["--config", cfg],
                &[],
            )
        })
        .collect();
    let mut coordinator = coordinator;
    let status = coordinator.wait_exit(Duration::from_secs(600));
    assert!(
        status.success(),
        "coordinator failed: {status}; log:\n{}",
        coordinator.log()
    );
    assert!(coordinator.messages_all_direct() > 0);
    let cluster = rounds(&coordinator.json());
    let local = rounds(&json_of(&medfed(&["run", "--config", cfg, "--json"], &[])));
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.len(), local.len());
    for (a, b) in cluster.iter().zip(&local) {
        assert_eq!(a["participants"], 3);
        for key in ["accuracy", "loss", "auc", "f1"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "round {}: {key} {x} (cluster) vs {y} (in-process)",
                a["round"]
            );
        }
    }
}

/// `model.init` starts the federation from a file the test writes (the
/// network's own names and shapes, as converted torchvision weights have
/// them): the run's results differ from the seeded start's; files that do
/// not fit, and configs that cannot work, are refused with the key and the
/// reason.
#[test]
fn an_initial_model_file_is_loaded_and_bad_ones_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let start = dir.path().join("start.safetensors");
    std::fs::write(&start, cnn().init_params(1234).to_safetensors(None).unwrap()).unwrap();
    let seeded = rounds(&json_of(&medfed(
        &[
            "run",
            "--config",
            resnet_config(dir.path(), "").to_str().unwrap(),
            "--json",
            "--rounds",
            "1",
        ],
        &[],
    )));
    let config = resnet_config(dir.path(), &format!("init = {start:?}"));
    let from_file = rounds(&json_of(&medfed(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--json",
            "--rounds",
            "1",
        ],
        &[],
    )));
    assert_ne!(
        seeded[0]["loss"], from_file[0]["loss"],
        "the init file changed nothing"
    );

    // A torchvision-style file: 3-channel stem, BatchNorm statistics.
    let rgb = dir.path().join("rgb.safetensors");
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = cnn()
        .init_params(1)
        .tensors()
        .map(|(spec, values)| (spec.name.clone(), spec.shape.clone(), values.to_vec()))
        .collect();
    tensors[0] = ("conv1.weight".into(), vec![64, 3, 7, 7], vec![0.0; 64 * 3 * 49]);
    write_safetensors(&rgb, &tensors);
    let with_stats = dir.path().join("stats.safetensors");
    tensors[0] = ("conv1.weight".into(), vec![64, 1, 7, 7], vec![0.0; 64 * 49]);
    tensors.push(("bn1.running_mean".into(), vec![64], vec![0.0; 64]));
    write_safetensors(&with_stats, &tensors);
    let cases = [
        (format!("init = {rgb:?}"), "sum the RGB filters"),
        (format!("init = {with_stats:?}"), "BatchNorm running statistics"),
        (
            "init = \"missing.safetensors\"".to_string(),
            "tasks.xray.model.init: reading",
        ),
        (
            "channels = [8, 16, 32]".to_string(),
            "`tasks.xray.model.channels`",
        ),
        ("arch = \"resnet50\"".to_string(), "resnet50"),
    ];
    for (model, expected) in cases {
        let config = resnet_config(dir.path(), &model);
        if model.starts_with("arch") {
            // A second `arch` key would be a TOML error of its own.
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("arch = \"resnet18\"\n", "");
            std::fs::write(&config, text).unwrap();
        }
        let out = medfed(
            &["run", "--config", config.to_str().unwrap(), "--rounds", "1"],
            &[],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{model}: accepted");
        assert!(stderr.contains(expected), "{model}: {stderr}");
    }
}

/// A safetensors file of f32 tensors, written by hand (the test's own
/// writer, so the names and shapes can be anything a converter produces).
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape, values) in tensors {
        let end = offset + 4 * values.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let header = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    for (_, _, values) in tensors {
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    std::fs::write(path, bytes).unwrap();
}
