//! The privacy ledger of one hospital and one dataset: the Rényi-DP it has
//! spent, summed over every release of every run, kept on the hospital's own
//! disk. It is written (atomically) before anything is released, so a crash
//! can only over-count, never under-count.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::rdp::{default_orders, epsilon};
use super::PrivacyError;

const VERSION: u32 = 1;

/// One charge: what was released and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub unix_time: u64,
    pub run: String,
    pub round: u32,
    /// "dp-sgd", "update" or "feature-stats".
    pub mechanism: String,
    pub sampling_rate: f64,
    pub noise_multiplier: f64,
    pub steps: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LedgerFile {
    version: u32,
    hospital: String,
    dataset: String,
    orders: Vec<f64>,
    /// Spent RDP per order; `null` is infinite (an order the accountant excludes).
    #[serde(with = "infinite_as_null")]
    rdp: Vec<f64>,
    entries: Vec<LedgerEntry>,
}

/// JSON has no infinity: write it as null and read null back as infinity.
mod infinite_as_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let out: Vec<Option<f64>> = v.iter().map(|x| x.is_finite().then_some(*x)).collect();
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let v: Vec<Option<f64>> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f64::INFINITY)).collect())
    }
}

#[derive(Debug, Clone)]
pub struct Ledger {
    path: Option<PathBuf>,
    file: LedgerFile,
}

impl Ledger {
    /// An empty ledger that lives in memory only (simulations).
    pub fn in_memory(hospital: &str, dataset: &str) -> Self {
        Self {
            path: None,
            file: LedgerFile {
                version: VERSION,
                hospital: hospital.to_string(),
                dataset: dataset.to_string(),
                orders: default_orders(),
                rdp: vec![0.0; default_orders().len()],
                entries: Vec::new(),
            },
        }
    }

    /// The ledger file for `hospital` and `dataset` under `dir`.
    pub fn path_for(dir: &Path, hospital: &str, dataset: &str) -> PathBuf {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        dir.join(format!("{}__{}.json", clean(hospital), clean(dataset)))
    }

    /// Load the ledger from `dir`, or start an empty one there.
    pub fn open(dir: &Path, hospital: &str, dataset: &str) -> Result<Self, PrivacyError> {
        let path = Self::path_for(dir, hospital, dataset);
        let err = |message: String| PrivacyError::Ledger {
            path: path.display().to_string(),
            message,
        };
        let mut ledger = Self::in_memory(hospital, dataset);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: LedgerFile = serde_json::from_str(&text)
                    .map_err(|e| err(format!("unreadable ({e}); refusing to guess what was spent")))?;
                if file.version != VERSION {
                    return Err(err(format!("version {} is not {VERSION}", file.version)));
                }
                if file.orders != ledger.file.orders || file.rdp.len() != file.orders.len() {
                    return Err(err("its RDP orders differ from this accountant's".into()));
                }
                if file.hospital != hospital || file.dataset != dataset {
                    return Err(err(format!(
                        "belongs to hospital '{}' / dataset '{}'",
                        file.hospital, file.dataset
                    )));
                }
                ledger.file = file;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e.to_string())),
        }
        ledger.path = Some(path);
        Ok(ledger)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn orders(&self) -> &[f64] {
        &self.file.orders
    }

    pub fn spent_rdp(&self) -> &[f64] {
        &self.file.rdp
    }

    pub fn entries(&self) -> &[LedgerEntry] {
        &self.file.entries
    }

    /// Epsilon spent so far at `delta`.
    pub fn epsilon(&self, delta: f64) -> f64 {
        epsilon(&self.file.orders, &self.file.rdp, delta).0
    }

    /// Epsilon after also spending `cost` (RDP over the same orders).
    pub fn epsilon_after(&self, cost: &[f64], delta: f64) -> f64 {
        let total: Vec<f64> = self.file.rdp.iter().zip(cost).map(|(a, b)| a + b).collect();
        epsilon(&self.file.orders, &total, delta).0
    }

    /// Record `cost` and persist it. Only after this returns may the release happen.
    pub fn charge(&mut self, cost: &[f64], entry: LedgerEntry) -> Result<(), PrivacyError> {
        if cost.len() != self.file.rdp.len() {
            return Err(PrivacyError::Invalid(
                "RDP cost has the wrong number of orders".into(),
            ));
        }
        let mut next = self.file.clone();
        next.rdp.iter_mut().zip(cost).for_each(|(a, b)| *a += b);
        next.entries.push(entry);
        if let Some(path) = &self.path {
            write_atomically(path, &next)?;
        }
        self.file = next;
        Ok(())
    }

    /// Delete the ledger file of `hospital`/`dataset` under `dir`: its spent
    /// budget is forgotten. Returns the file removed, if there was one.
    pub fn reset(dir: &Path, hospital: &str, dataset: &str) -> Result<Option<PathBuf>, PrivacyError> {
        let path = Self::path_for(dir, hospital, dataset);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PrivacyError::Ledger {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }
}

fn write_atomically(path: &Path, file: &LedgerFile) -> Result<(), PrivacyError> {
    let err = |message: String| PrivacyError::Ledger {
        path: path.display().to_string(),
        message,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create its directory: {e}")))?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(file).map_err(|e| err(e.to_string()))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(text.as_bytes()).map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::rdp::compose;

    fn entry(round: u32) -> LedgerEntry {
        LedgerEntry {
            unix_time: 0,
            run: "r".into(),
            round,
            mechanism: "dp-sgd".into(),
            sampling_rate: 0.2,
            noise_multiplier: 2.0,
            steps: 10,
        }
    }

    #[test]
    fn spending_survives_reopening_and_reset_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let cost = compose(0.2, 2.0, 10, &default_orders());
        let mut ledger = Ledger::open(dir.path(), "h1", "bc").unwrap();
        assert_eq!(ledger.epsilon(1e-5), 0.0);
        ledger.charge(&cost, entry(1)).unwrap();
        ledger.charge(&cost, entry(2)).unwrap();
        let spent = ledger.epsilon(1e-5);
        assert!(spent > 0.0);
        let reopened = Ledger::open(dir.path(), "h1", "bc").unwrap();
        assert_eq!(reopened.epsilon(1e-5), spent);
        assert_eq!(reopened.entries().len(), 2);
        // Another dataset of the same hospital has its own ledger.
        assert_eq!(
            Ledger::open(dir.path(), "h1", "other").unwrap().epsilon(1e-5),
            0.0
        );
        assert!(Ledger::reset(dir.path(), "h1", "bc").unwrap().is_some());
        assert_eq!(Ledger::open(dir.path(), "h1", "bc").unwrap().epsilon(1e-5), 0.0);
    }

    #[test]
    fn a_corrupt_ledger_is_an_error_not_a_fresh_budget() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Ledger::path_for(dir.path(), "h1", "bc"), "{not json").unwrap();
        let e = Ledger::open(dir.path(), "h1", "bc").unwrap_err();
        assert!(e.to_string().contains("refusing to guess"), "{e}");
    }
}
