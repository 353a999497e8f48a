//! The model report as Markdown.

use std::fmt::Write;

use super::{federated_sentence, final_sentence, incidents, num, ModelReport};

/// Table cells hold names from the federation: pipes and newlines would
/// break the table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

pub fn render(r: &ModelReport) -> String {
    let mut s = String::new();
    let m = &r.model;
    let _ = writeln!(s, "# Model report: {}\n", cell(&r.title));
    let _ = writeln!(
        s,
        "Run `{}`, round {}, registered {}. File `{}`, sha256 `{}`.{}\n",
        cell(&m.run_id),
        m.round,
        m.created_at,
        cell(&m.path),
        m.sha256,
        m.replaces
            .map(|v| format!(
                " Replaces version {v} (trained without: {}).",
                r.lineage.excluded.join(", ")
            ))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "## Data\n");
    let _ = writeln!(
        s,
        "Held-out test set (no hospital trained on it): {} records, {} positive, {} negative.\n",
        r.held_out.size, r.held_out.positives, r.held_out.negatives
    );
    let _ = writeln!(s, "| hospital | records (as announced) |\n|---|---|");
    for (h, n) in &r.records_per_hospital {
        let _ = writeln!(s, "| {} | {n} |", cell(h));
    }
    let _ = writeln!(s, "\n## Training configuration\n");
    let _ = writeln!(s, "Strategy: `{}`\n", r.strategy);
    let _ = writeln!(s, "Task configuration: `{}`\n", r.task_config);
    let _ = writeln!(s, "## Privacy\n");
    match &r.privacy {
        Some(p) => {
            let _ = writeln!(
                s,
                "Differential privacy ({}) at every hospital, with respect to {}, delta {:e}, RDP accountant.\n",
                p.mode, p.relation, p.delta
            );
            for line in &p.statement {
                let _ = writeln!(s, "- {}", cell(line));
            }
        }
        None => {
            let _ = writeln!(
                s,
                "Differential privacy was off: updates were exact and carry no formal guarantee."
            );
        }
    }
    let _ = writeln!(s, "\n## Rounds (held-out test set)\n");
    let _ = writeln!(
        s,
        "| round | participants | accuracy | loss | F1 | AUC | federated accuracy |\n|---|---|---|---|---|---|---|"
    );
    for f in &r.rounds {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f.round,
            f.participants,
            num(Some(f.accuracy)),
            num(Some(f.loss)),
            num(f.f1),
            num(f.auc),
            num(f.federated_accuracy)
        );
    }
    let fm = &r.final_metrics;
    let c = &fm["confusion"];
    let _ = writeln!(s, "\n## Final held-out metrics\n");
    let _ = writeln!(s, "{}\n", final_sentence(r));
    let _ = writeln!(
        s,
        "| | predicted positive | predicted negative |\n|---|---|---|\n| positive | {} | {} |\n| negative | {} | {} |\n",
        c["tp"], c["fn"], c["fp"], c["tn"]
    );
    let _ = writeln!(s, "## Federated evaluation\n");
    let _ = writeln!(s, "{}\n", federated_sentence(r));
    let _ = writeln!(s, "## Lineage\n");
    let _ = writeln!(
        s,
        "| round | hospital | outcome | samples | reason |\n|---|---|---|---|---|"
    );
    for (round, contributions) in &r.lineage.rounds {
        for c in contributions {
            let _ = writeln!(
                s,
                "| {round} | {} | {} | {} | {} |",
                cell(&c.hospital),
                c.outcome,
                c.samples.map_or("-".into(), |n| n.to_string()),
                cell(c.reason.as_deref().unwrap_or(""))
            );
        }
    }
    let _ = writeln!(s, "\n## Attacks and rejections\n");
    let seen = incidents(r);
    if seen.is_empty() {
        let _ = writeln!(s, "None.");
    }
    for line in seen {
        let _ = writeln!(s, "- {}", cell(&line));
    }
    s
}
