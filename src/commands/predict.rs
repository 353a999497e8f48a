//! `medfed predict`: score records with a registered model — the way a
//! hospital uses what it helped build. Tabular models read a CSV with the
//! task's feature columns (with or without the label column); imaging
//! models read a Kaggle-layout folder or a MedMNIST .npz (its test split).
//! Writes `row,probability,predicted` as CSV; with labels, also the metrics.

use std::io::Write;

use anyhow::{bail, Context, Result};

use medfed_models::checkpoint::Checkpoint;
use medfed_models::data::csv::{csv_header, load_csv, load_unlabelled_csv, CsvSpec};
use medfed_models::learner::cnn::predict_images;
use medfed_models::metrics::binary_metrics;

use super::models::{open_existing, resolve};
use crate::cli::PredictArgs;
use crate::config::{parse_unvalidated, DataFormat, HospitalKind, TaskConfig};
use crate::tasks::imaging::{cnn_config, load_split};

pub fn execute(a: &PredictArgs) -> Result<()> {
    let store = open_existing(&a.at)?;
    let model = resolve(&store, &a.model)?;
    let bytes = store.model_bytes(&model)?;
    let checkpoint = Checkpoint::from_bytes(&bytes, None)?;
    let config_text = store.run_config(&model.run_id)?.with_context(|| {
        format!(
            "run {} of model {}:{} is not in the store",
            model.run_id, model.task, model.version
        )
    })?;
    let config = parse_unvalidated(
        &config_text,
        &format!("the configuration of run {}", model.run_id),
        std::iter::empty(),
    )?;
    let task: &TaskConfig = config.tasks.get(&model.task).with_context(|| {
        format!(
            "run {} has no task '{}' in its configuration",
            model.run_id, model.task
        )
    })?;
    let features = store.features(&model.run_id, &model.task)?;
    let (probabilities, labels, positive) = match task.kind {
        HospitalKind::Tabular => tabular(a, task, &checkpoint, features)?,
        HospitalKind::Imaging => imaging(a, task, &checkpoint)?,
        other => bail!("predict does not support {} tasks yet", other.name()),
    };
    let mut text = format!("row,probability_{positive},predicted_{positive}\n");
    for (i, p) in probabilities.iter().enumerate() {
        text.push_str(&format!("{i},{p},{}\n", u8::from(*p >= 0.5)));
    }
    match &a.output {
        Some(path) => std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    eprintln!(
        "scored {} records with {}:{} (sha256 {})",
        probabilities.len(),
        model.task,
        model.version,
        model.sha256
    );
    if let Some(labels) = labels {
        let m = binary_metrics(&probabilities, &labels);
        eprintln!(
            "on their labels: accuracy {}, f1 {}, auc {}, loss {}",
            m.accuracy,
            m.f1,
            m.auc.map_or("n/a".into(), |v| v.to_string()),
            m.loss
        );
    }
    Ok(())
}

type Scored = (Vec<f64>, Option<Vec<bool>>, String);

fn tabular(
    a: &PredictArgs,
    task: &TaskConfig,
    checkpoint: &Checkpoint,
    features: Option<Vec<String>>,
) -> Result<Scored> {
    let label = task.data.label_column.clone().unwrap_or_default();
    let positive = task.data.positive_class.clone().unwrap_or_default();
    let header = csv_header(&a.input)?;
    // Columns are matched by name: a CSV whose columns come in another order
    // is scored right, one that lacks a column is refused.
    if let Some(expected) = &features {
        let given: Vec<&String> = header.iter().filter(|h| **h != label).collect();
        if given
            .iter()
            .map(|s| s.as_str())
            .ne(expected.iter().map(|s| s.as_str()))
        {
            let missing: Vec<&String> = expected.iter().filter(|f| !header.contains(f)).collect();
            let extra: Vec<&&String> = given.iter().filter(|g| !expected.contains(g)).collect();
            if !missing.is_empty() || !extra.is_empty() {
                bail!(
                    "{}: the model's input columns do not match: missing [{}], unknown [{}]",
                    a.input.display(),
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    let (mut data, labels) = if !label.is_empty() && header.contains(&label) {
        let spec = CsvSpec {
            label_column: label,
            positive_class: positive.clone(),
        };
        let data = load_csv(&a.input, &spec)?;
        let labels = data.labels.clone();
        (data, Some(labels))
    } else {
        (load_unlabelled_csv(&a.input)?, None)
    };
    if let Some(expected) = &features {
        data = data.with_columns(expected)?;
    }
    let weights = checkpoint.model.params.as_slice().len().saturating_sub(1);
    if data.n_features() != weights {
        bail!(
            "{}: {} feature columns, but the model was trained on {weights} (give the task's feature \
             columns in the training order, with or without its label column)",
            a.input.display(),
            data.n_features()
        );
    }
    let probabilities = medfed_models::learner::logistic::predict(&checkpoint.model, data)?;
    Ok((probabilities, labels, positive))
}

fn imaging(a: &PredictArgs, task: &TaskConfig, checkpoint: &Checkpoint) -> Result<Scored> {
    let format = if a.input.extension().is_some_and(|e| e == "npz") {
        DataFormat::Npz
    } else {
        DataFormat::Folder
    };
    let cnn = cnn_config(task);
    let images = load_split(&a.input, format, "test", cnn.size)?;
    let probabilities = predict_images(&cnn, &checkpoint.model, &images)?;
    Ok((probabilities, Some(images.labels.clone()), "pneumonia".into()))
}
