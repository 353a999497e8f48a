//! The model report as one self-contained HTML page: inline CSS, inline
//! SVG charts, no script and no network. Every value from the federation
//! (hospital names, reasons) is escaped: it is text, never markup.

use std::fmt::Write;

use super::{federated_sentence, final_sentence, incidents, num, ModelReport};

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#1b1f24}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccd;padding:.25em .6em;text-align:left}\
th{background:#eef1f6}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ccd}\
code{background:#f3f4f7;padding:0 .2em;word-break:break-all}.chart{border:1px solid #ccd;background:#fff}";

/// One line of a chart: its name, colour and (round, value) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart of `series` over rounds, as SVG.
fn chart(title: &str, series: &[Series<'_>]) -> String {
    let (w, h, pad) = (640.0, 220.0, 36.0);
    let points: Vec<&(f64, f64)> = series
        .iter()
        .flat_map(|(_, _, p)| p)
        .filter(|(_, y)| y.is_finite())
        .collect();
    if points.is_empty() {
        return String::new();
    }
    let (x0, x1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (y0, y1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    let (xr, yr) = ((x1 - x0).max(1.0), (y1 - y0).max(1e-9));
    let sx = |x: f64| pad + (x - x0) / xr * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / yr * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title)
    );
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"16\" font-size=\"13\">{}</text>\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#889\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#889\"/>\
         <text x=\"2\" y=\"{ty}\" font-size=\"11\">{y1:.3}</text><text x=\"2\" y=\"{b}\" font-size=\"11\">{y0:.3}</text>\
         <text x=\"{pad}\" y=\"{lx}\" font-size=\"11\">round {x0}</text><text x=\"{rx}\" y=\"{lx}\" font-size=\"11\">{x1}</text>",
        esc(title),
        b = h - pad,
        r = w - pad,
        ty = pad + 4.0,
        lx = h - 12.0,
        rx = w - pad - 20.0,
    );
    for (i, (name, colour, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{}\" y=\"16\" font-size=\"12\" fill=\"{colour}\">{}</text>",
            path.join(" "),
            w - 220.0 + 110.0 * i as f64,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", esc(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

pub fn render(r: &ModelReport) -> String {
    let m = &r.model;
    let mut b = String::new();
    let _ = write!(
        b,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
         <title>Model report: {t}</title><style>{STYLE}</style></head><body><h1>Model report: {t}</h1>",
        t = esc(&r.title)
    );
    let _ = write!(
        b,
        "<p>Run <code>{}</code>, round {}. File <code>{}</code>, sha256 <code>{}</code>.{}</p>",
        esc(&m.run_id),
        m.round,
        esc(&m.path),
        esc(&m.sha256),
        m.replaces
            .map(|v| esc(&format!(
                " Replaces version {v} (trained without: {}).",
                r.lineage.excluded.join(", ")
            )))
            .unwrap_or_default()
    );
    b.push_str("<h2>Data</h2>");
    let _ = write!(
        b,
        "<p>Held-out test set (no hospital trained on it): {} records, {} positive, {} negative.</p>",
        r.held_out.size, r.held_out.positives, r.held_out.negatives
    );
    let rows: Vec<Vec<String>> = r
        .records_per_hospital
        .iter()
        .map(|(h, n)| vec![h.clone(), n.to_string()])
        .collect();
    table(&mut b, &["hospital", "records (as announced)"], &rows);
    b.push_str("<h2>Training configuration</h2>");
    let _ = write!(
        b,
        "<p>Strategy: <code>{}</code></p><p>Task configuration: <code>{}</code></p>",
        esc(&r.strategy.to_string()),
        esc(&r.task_config.to_string())
    );
    b.push_str("<h2>Privacy</h2>");
    match &r.privacy {
        Some(p) => {
            let _ = write!(
                b,
                "<p>Differential privacy ({}) at every hospital, with respect to {}, delta {:e}, RDP accountant.</p><ul>",
                esc(&p.mode),
                esc(&p.relation),
                p.delta
            );
            for line in &p.statement {
                let _ = write!(b, "<li>{}</li>", esc(line));
            }
            b.push_str("</ul>");
        }
        None => b.push_str(
            "<p>Differential privacy was off: updates were exact and carry no formal guarantee.</p>",
        ),
    }
    b.push_str("<h2>Rounds (held-out test set)</h2>");
    let acc: Vec<(f64, f64)> = r.rounds.iter().map(|f| (f.round as f64, f.accuracy)).collect();
    let fed: Vec<(f64, f64)> = r
        .rounds
        .iter()
        .filter_map(|f| Some((f.round as f64, f.federated_accuracy?)))
        .collect();
    let loss: Vec<(f64, f64)> = r.rounds.iter().map(|f| (f.round as f64, f.loss)).collect();
    b.push_str(&chart(
        "accuracy per round",
        &[("held-out", "#1f6feb", acc), ("federated", "#2da44e", fed)],
    ));
    b.push_str(&chart("held-out loss per round", &[("loss", "#cf222e", loss)]));
    let rows: Vec<Vec<String>> = r
        .rounds
        .iter()
        .map(|f| {
            vec![
                f.round.to_string(),
                f.participants.to_string(),
                num(Some(f.accuracy)),
                num(Some(f.loss)),
                num(f.f1),
                num(f.auc),
                num(f.federated_accuracy),
            ]
        })
        .collect();
    table(
        &mut b,
        &[
            "round",
            "participants",
            "accuracy",
            "loss",
            "F1",
            "AUC",
            "federated accuracy",
        ],
        &rows,
    );
    let fm = &r.final_metrics;
    let c = &fm["confusion"];
    b.push_str("<h2>Final held-out metrics</h2>");
    let _ = write!(b, "<p>{}</p>", esc(&final_sentence(r)));
    table(
        &mut b,
        &["", "predicted positive", "predicted negative"],
        &[
            vec!["positive".into(), c["tp"].to_string(), c["fn"].to_string()],
            vec!["negative".into(), c["fp"].to_string(), c["tn"].to_string()],
        ],
    );
    b.push_str("<h2>Federated evaluation</h2>");
    let _ = write!(b, "<p>{}</p>", esc(&federated_sentence(r)));
    b.push_str("<h2>Lineage</h2>");
    let rows: Vec<Vec<String>> = r
        .lineage
        .rounds
        .iter()
        .flat_map(|(round, cs)| {
            cs.iter().map(move |c| {
                vec![
                    round.to_string(),
                    c.hospital.clone(),
                    c.outcome.clone(),
                    c.samples.map_or("-".into(), |n| n.to_string()),
                    c.reason.clone().unwrap_or_default(),
                ]
            })
        })
        .collect();
    table(
        &mut b,
        &["round", "hospital", "outcome", "samples", "reason"],
        &rows,
    );
    b.push_str("<h2>Attacks and rejections</h2><ul>");
    let seen = incidents(r);
    if seen.is_empty() {
        b.push_str("<li>None.</li>");
    }
    for line in seen {
        let _ = write!(b, "<li>{}</li>", esc(&line));
    }
    b.push_str("</ul></body></html>\n");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_text() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        let svg = chart("<b>", &[("h<1>", "#000", vec![(1.0, 0.5), (2.0, 0.7)])]);
        assert!(
            svg.contains("&lt;b&gt;") && svg.contains("h&lt;1&gt;") && !svg.contains("<b>"),
            "{svg}"
        );
        assert!(chart("empty", &[("x", "#000", vec![])]).is_empty());
    }
}
