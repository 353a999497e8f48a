//! What one `runs/log-batch` call may carry, and splitting a run's values
//! into calls that fit: at most 1000 metrics, 100 params and 100 tags (1000
//! items in all) and 1 MB per request; keys of at most 250 characters,
//! param values of at most 6000 and tag values of at most 8000.

use serde::Serialize;

pub const MAX_METRICS: usize = 1000;
pub const MAX_PARAMS: usize = 100;
pub const MAX_TAGS: usize = 100;
pub const MAX_ITEMS: usize = 1000;
/// Kept under MLflow's 1 MB so that the JSON framing always fits.
pub const MAX_BYTES: usize = 1_000_000 - 4_096;
pub const MAX_KEY: usize = 250;
pub const MAX_PARAM_VALUE: usize = 6000;
pub const MAX_TAG_VALUE: usize = 8000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub step: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Param {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// One `runs/log-batch` request's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Batch {
    pub metrics: Vec<Metric>,
    pub params: Vec<Param>,
    pub tags: Vec<Tag>,
}

/// A value MLflow would refuse, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MLflow cannot take {what} '{key}': {reason}")]
pub struct Unfit {
    pub what: &'static str,
    pub key: String,
    pub reason: String,
}

fn check(what: &'static str, key: &str, value_len: usize, max_value: usize) -> Result<(), Unfit> {
    let unfit = |reason: String| {
        Err(Unfit {
            what,
            key: key.chars().take(80).collect(),
            reason,
        })
    };
    if key.is_empty() || key.chars().count() > MAX_KEY {
        return unfit(format!("a key has 1..={MAX_KEY} characters"));
    }
    if value_len > max_value {
        return unfit(format!(
            "its value has {value_len} characters, more than {max_value}"
        ));
    }
    Ok(())
}

/// The JSON size of one item, as it will be sent.
fn size<T: Serialize>(item: &T) -> usize {
    serde_json::to_vec(item).map_or(usize::MAX, |v| v.len() + 1)
}

impl Batch {
    fn items(&self) -> usize {
        self.metrics.len() + self.params.len() + self.tags.len()
    }
}

/// Split into requests MLflow accepts, params and tags first (a run's
/// description before its history), in the given order.
pub fn split(metrics: Vec<Metric>, params: Vec<Param>, tags: Vec<Tag>) -> Result<Vec<Batch>, Unfit> {
    for p in &params {
        check("param", &p.key, p.value.chars().count(), MAX_PARAM_VALUE)?;
    }
    for t in &tags {
        check("tag", &t.key, t.value.chars().count(), MAX_TAG_VALUE)?;
    }
    for m in &metrics {
        check("metric", &m.key, 0, 0)?;
        if !m.value.is_finite() {
            // JSON has no NaN: MLflow would refuse the whole batch.
            return Err(Unfit {
                what: "metric",
                key: m.key.clone(),
                reason: format!("{} is not a finite number", m.value),
            });
        }
    }
    let mut packer = Packer::default();
    for p in params {
        packer.room(size(&p), packer.current.params.len() >= MAX_PARAMS);
        packer.current.params.push(p);
    }
    for t in tags {
        packer.room(size(&t), packer.current.tags.len() >= MAX_TAGS);
        packer.current.tags.push(t);
    }
    for m in metrics {
        packer.room(size(&m), packer.current.metrics.len() >= MAX_METRICS);
        packer.current.metrics.push(m);
    }
    Ok(packer.finish())
}

#[derive(Default)]
struct Packer {
    out: Vec<Batch>,
    current: Batch,
    bytes: usize,
}

impl Packer {
    /// Make room for one more item of `extra` bytes (`full`: its kind has
    /// reached its own limit in the current batch).
    fn room(&mut self, extra: usize, full: bool) {
        if full || self.current.items() >= MAX_ITEMS || self.bytes + extra > MAX_BYTES {
            if self.current.items() > 0 {
                self.out.push(std::mem::take(&mut self.current));
            }
            self.bytes = 0;
        }
        self.bytes += extra;
    }

    fn finish(mut self) -> Vec<Batch> {
        if self.current.items() > 0 {
            self.out.push(self.current);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(i: usize) -> Metric {
        Metric {
            key: format!("hospital.h{}.accuracy", i % 7),
            value: i as f64 / 10.0,
            timestamp: 1_700_000_000_000,
            step: i as i64,
        }
    }

    fn param(i: usize) -> Param {
        Param {
            key: format!("p{i}"),
            value: "x".repeat(10),
        }
    }

    #[test]
    fn every_batch_keeps_to_mlflows_limits_and_nothing_is_lost_or_reordered() {
        let metrics: Vec<Metric> = (0..2_345).map(metric).collect();
        let params: Vec<Param> = (0..230).map(param).collect();
        let tags: Vec<Tag> = (0..101)
            .map(|i| Tag {
                key: format!("t{i}"),
                value: "v".into(),
            })
            .collect();
        let batches = split(metrics.clone(), params.clone(), tags.clone()).unwrap();
        for b in &batches {
            assert!(
                b.metrics.len() <= MAX_METRICS && b.params.len() <= MAX_PARAMS && b.tags.len() <= MAX_TAGS
            );
            assert!(b.items() <= MAX_ITEMS);
            assert!(serde_json::to_vec(b).unwrap().len() <= 1_000_000);
        }
        let all = |f: fn(&Batch) -> usize| batches.iter().map(f).sum::<usize>();
        assert_eq!(all(|b| b.metrics.len()), 2_345);
        assert_eq!(all(|b| b.params.len()), 230);
        assert_eq!(all(|b| b.tags.len()), 101);
        let flat: Vec<Metric> = batches.iter().flat_map(|b| b.metrics.clone()).collect();
        assert_eq!(flat, metrics);
        let flat: Vec<Param> = batches.iter().flat_map(|b| b.params.clone()).collect();
        assert_eq!(flat, params);
    }

    #[test]
    fn a_megabyte_is_split_by_size_too() {
        // Within the count limits (100 params, 100 tags) but ~1.4 MB.
        let params: Vec<Param> = (0..100)
            .map(|i| Param {
                key: format!("p{i}"),
                value: "y".repeat(MAX_PARAM_VALUE),
            })
            .collect();
        let tags: Vec<Tag> = (0..100)
            .map(|i| Tag {
                key: format!("t{i}"),
                value: "z".repeat(MAX_TAG_VALUE),
            })
            .collect();
        let batches = split(Vec::new(), params, tags).unwrap();
        assert!(batches.len() >= 2, "{}", batches.len());
        for b in &batches {
            assert!(serde_json::to_vec(b).unwrap().len() <= 1_000_000);
        }
        assert_eq!(
            batches
                .iter()
                .map(|b| b.params.len() + b.tags.len())
                .sum::<usize>(),
            200
        );
    }

    #[test]
    fn what_mlflow_would_refuse_is_named() {
        let long = Param {
            key: "strategy".into(),
            value: "z".repeat(6_001),
        };
        let e = split(Vec::new(), vec![long], Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MLflow cannot take param 'strategy': its value has 6001 characters, more than 6000"
        );
        let nan = Metric {
            value: f64::NAN,
            ..metric(1)
        };
        assert!(split(vec![nan], Vec::new(), Vec::new())
            .unwrap_err()
            .to_string()
            .contains("not a finite number"));
        let key = Tag {
            key: "k".repeat(251),
            value: String::new(),
        };
        assert!(split(Vec::new(), Vec::new(), vec![key]).is_err());
        assert!(split(Vec::new(), Vec::new(), Vec::new()).unwrap().is_empty());
    }
}
