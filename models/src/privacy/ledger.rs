//! The privacy ledger of one dataset: the Rényi-DP spent on it, summed over
//! every release of every run, kept on the hospital's own disk.
//!
//! A ledger belongs to the data, not to whoever trains on it: it is keyed by
//! the dataset's label and the content fingerprint of its records, so a
//! renamed hospital, or the same records re-sharded or re-ordered, finds the
//! budget already spent. Every charge happens under an exclusive lock on the
//! ledger (a `.lock` file beside it): the file is read again, the budget
//! checked, the new total written to a temporary file, fsynced, renamed over
//! the ledger and the directory fsynced — all before anything is released, so
//! a crash can only over-count, and two processes on one ledger wait for each
//! other instead of losing each other's charges. The directory's index lists
//! every ledger ever created in it: a listed ledger whose file is gone is an
//! error, never a fresh budget.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fingerprint::DataFingerprint;
use super::rdp::{default_orders, epsilon};
use super::PrivacyError;

const VERSION: u32 = 2;
/// The mechanism name of update-level (hospital-level) releases.
const UPDATE_LEVEL: &str = "update";
/// One line per ledger ever created in the directory (its file name).
const INDEX: &str = "ledgers.index";

/// Which data a ledger accounts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerKey {
    /// What the data is (the task it serves, e.g. "breast_cancer").
    pub dataset: String,
    pub fingerprint: DataFingerprint,
}

impl LedgerKey {
    /// `<dataset>__<first 16 hex digits of the fingerprint>.json`.
    pub fn file_name(&self) -> String {
        let clean: String = self
            .dataset
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{clean}__{}.json", self.fingerprint.short())
    }
}

/// One charge: what was released and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub unix_time: u64,
    pub run: String,
    /// The hospital that made the release (informational).
    pub hospital: String,
    pub round: u32,
    /// "dp-sgd", "update", "feature-stats" or "record-count".
    pub mechanism: String,
    pub sampling_rate: f64,
    /// The noise the released sum carries (against the coordinator).
    pub noise_multiplier: f64,
    pub steps: u64,
    /// Distributed DP: the release was a noise share of a secure sum of at
    /// least this many hospitals (its own noise is noise_multiplier / sqrt(k)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summed_with: Option<u32>,
}

/// The record count released once for this dataset; later runs reuse it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReleasedCount {
    pub value: u64,
    pub noise_multiplier: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LedgerFile {
    version: u32,
    dataset: String,
    fingerprint: String,
    orders: Vec<f64>,
    /// Spent RDP per order; `null` is infinite (an order the accountant excludes).
    #[serde(with = "infinite_as_null")]
    rdp: Vec<f64>,
    #[serde(default)]
    released_count: Option<ReleasedCount>,
    /// The budget the ledger was first charged against; a larger one is
    /// refused later (a renamed hospital must not bring a bigger budget).
    #[serde(default)]
    limit: Option<Limit>,
    /// Spent RDP per order against the coordinator colluding with the
    /// other hospitals (each distributed release counted at its own noise
    /// share only); absent until the first distributed release, then equal
    /// to `rdp` plus the difference.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_infinite_as_null"
    )]
    collusion_rdp: Option<Vec<f64>>,
    entries: Vec<LedgerEntry>,
}

mod optional_infinite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<f64>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::infinite_as_null::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
        let v: Option<Vec<Option<f64>>> = Option::deserialize(d)?;
        Ok(v.map(|v| v.into_iter().map(|x| x.unwrap_or(f64::INFINITY)).collect()))
    }
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

/// The limit a charge must stay within: epsilon at delta.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    pub epsilon: f64,
    pub delta: f64,
}

/// What a charge adds: its RDP cost, its record, and possibly the count it releases.
pub struct Charge<'a> {
    pub cost: &'a [f64],
    pub entry: LedgerEntry,
    pub count: Option<ReleasedCount>,
    /// The cost against a coordinator colluding with the other hospitals,
    /// when it differs from `cost` (a distributed noise share).
    pub collusion: Option<&'a [f64]>,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    path: Option<PathBuf>,
    file: LedgerFile,
    /// Writes of the file by this process (a hospital's /metrics).
    writes: u64,
}

/// A ledger file as `medfed privacy ledger-show` lists it.
#[derive(Debug, Clone)]
pub struct LedgerSummary {
    pub file: PathBuf,
    pub dataset: String,
    pub fingerprint: String,
    pub ledger: Ledger,
}

fn ledger_err(path: &Path, message: impl Into<String>) -> PrivacyError {
    PrivacyError::Ledger {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl Ledger {
    /// An empty ledger that lives in memory only (simulations).
    pub fn in_memory(key: &LedgerKey) -> Self {
        Self {
            path: None,
            file: LedgerFile {
                version: VERSION,
                dataset: key.dataset.clone(),
                fingerprint: key.fingerprint.to_string(),
                orders: default_orders(),
                rdp: vec![0.0; default_orders().len()],
                released_count: None,
                limit: None,
                collusion_rdp: None,
                entries: Vec::new(),
            },
            writes: 0,
        }
    }

    pub fn path_for(dir: &Path, key: &LedgerKey) -> PathBuf {
        dir.join(key.file_name())
    }

    /// Open the ledger of `key` under `dir`, creating it (and the directory)
    /// the first time. A ledger the directory's index lists but whose file is
    /// missing is an error: its budget was spent and must not start afresh.
    pub fn open(dir: &Path, key: &LedgerKey) -> Result<Self, PrivacyError> {
        let path = Self::path_for(dir, key);
        std::fs::create_dir_all(dir)
            .map_err(|e| ledger_err(dir, format!("cannot create the ledger directory: {e}")))?;
        let _lock = lock(&lock_path(&path))?;
        let name = key.file_name();
        match read(&path)? {
            Some(file) => {
                // A crash between writing the file and indexing it leaves it unlisted.
                if !index_lists(dir, &name)? {
                    append_to_index(dir, &name)?;
                }
                if file.fingerprint != key.fingerprint.as_str() || file.dataset != key.dataset {
                    return Err(ledger_err(
                        &path,
                        format!(
                            "belongs to dataset '{}' with fingerprint {}, not '{}' / {}",
                            file.dataset, file.fingerprint, key.dataset, key.fingerprint
                        ),
                    ));
                }
                Ok(Self {
                    path: Some(path),
                    file,
                    writes: 0,
                })
            }
            None if index_lists(dir, &name)? => Err(ledger_err(
                &path,
                format!(
                    "is missing, but {INDEX} shows it was created: the privacy already spent on this \
                     data is unknown, so no fresh budget is started. Restore the file from a backup, or \
                     forget the spending on purpose with `medfed privacy ledger-reset`"
                ),
            )),
            None => {
                let ledger = Self {
                    path: Some(path.clone()),
                    file: Self::in_memory(key).file,
                    writes: 1,
                };
                // Indexed first: from then on a missing file is an error.
                append_to_index(dir, &name)?;
                write_atomically(&path, &ledger.file)?;
                Ok(ledger)
            }
        }
    }

    /// Every ledger file in `dir`, read without locking (for display).
    pub fn list(dir: &Path) -> Result<Vec<LedgerSummary>, PrivacyError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| ledger_err(dir, format!("cannot read the ledger directory: {e}")))?;
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| ledger_err(dir, e.to_string()))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(file) = read(&path)? else { continue };
            out.push(LedgerSummary {
                file: path.clone(),
                dataset: file.dataset.clone(),
                fingerprint: file.fingerprint.clone(),
                ledger: Self {
                    path: Some(path),
                    file,
                    writes: 0,
                },
            });
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }

    /// How many times this process wrote the ledger's file.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn dataset(&self) -> &str {
        &self.file.dataset
    }

    pub fn fingerprint(&self) -> &str {
        &self.file.fingerprint
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

    pub fn released_count(&self) -> Option<ReleasedCount> {
        self.file.released_count
    }

    /// Epsilon spent so far at `delta`.
    pub fn epsilon(&self, delta: f64) -> f64 {
        epsilon(&self.file.orders, &self.file.rdp, delta).0
    }

    /// Epsilon spent so far at `delta` against a coordinator colluding with
    /// the other hospitals (equal to `epsilon` without distributed releases).
    pub fn epsilon_collusion(&self, delta: f64) -> f64 {
        match &self.file.collusion_rdp {
            Some(rdp) => epsilon(&self.file.orders, rdp, delta).0,
            None => self.epsilon(delta),
        }
    }

    /// Epsilon after also spending `cost` (RDP over the same orders).
    pub fn epsilon_after(&self, cost: &[f64], delta: f64) -> f64 {
        let total: Vec<f64> = self.file.rdp.iter().zip(cost).map(|(a, b)| a + b).collect();
        epsilon(&self.file.orders, &total, delta).0
    }

    /// Record a charge and persist it, refusing it (and writing nothing) if
    /// it would take the spending past `limit`. Only after this returns Ok
    /// may the release happen. On disk this runs under the ledger's lock and
    /// starts from the file's current contents, so charges made meanwhile by
    /// another process are counted too.
    pub fn charge(&mut self, charge: Charge<'_>, limit: Limit) -> Result<(), PrivacyError> {
        if charge.cost.len() != self.file.rdp.len() {
            return Err(PrivacyError::Invalid(
                "RDP cost has the wrong number of orders".into(),
            ));
        }
        let _lock = match &self.path {
            Some(path) => {
                let guard = lock(&lock_path(path))?;
                self.file = read(path)?
                    .ok_or_else(|| ledger_err(path, "disappeared while in use; nothing was released"))?;
                Some(guard)
            }
            None => None,
        };
        if charge.count.is_some() && self.file.released_count.is_some() {
            return Err(PrivacyError::Invalid(
                "the record count of this dataset was already released".into(),
            ));
        }
        // A hospital-level (replace-the-dataset) guarantee cannot cover
        // record-level releases already made from the same data.
        if charge.entry.mechanism == UPDATE_LEVEL {
            if let Some(e) = self.file.entries.iter().find(|e| e.mechanism != UPDATE_LEVEL) {
                return Err(PrivacyError::Invalid(format!(
                    "this data already made record-level releases ({}), so update-level DP cannot \
                     give its hospital-level guarantee for it; keep using dp-sgd for this data",
                    e.mechanism
                )));
            }
        }
        // Never above the budget this data was bound to, whatever the caller says.
        if let Some(bound) = self.file.limit {
            if !(limit.epsilon <= bound.epsilon && limit.delta <= bound.delta) {
                return Err(PrivacyError::Invalid(format!(
                    "a charge against epsilon {} at delta {} exceeds this data's budget (epsilon {} at delta {})",
                    limit.epsilon, limit.delta, bound.epsilon, bound.delta
                )));
            }
        }
        let after = self.epsilon_after(charge.cost, limit.delta);
        // A NaN refuses too.
        if after.is_nan() || after > limit.epsilon * (1.0 + 1e-9) {
            return Err(PrivacyError::BudgetExhausted(format!(
                "epsilon spent {:.4} of {}; this {} release would bring it to {:.4}",
                self.epsilon(limit.delta),
                limit.epsilon,
                charge.entry.mechanism,
                after
            )));
        }
        if charge.collusion.is_some_and(|c| c.len() != self.file.rdp.len()) {
            return Err(PrivacyError::Invalid(
                "the collusion cost has the wrong number of orders".into(),
            ));
        }
        let mut next = self.file.clone();
        if charge.collusion.is_some() || next.collusion_rdp.is_some() {
            let before = next.rdp.clone();
            let collusion = next.collusion_rdp.get_or_insert(before);
            let cost = charge.collusion.unwrap_or(charge.cost);
            collusion.iter_mut().zip(cost).for_each(|(a, b)| *a += b);
        }
        next.rdp.iter_mut().zip(charge.cost).for_each(|(a, b)| *a += b);
        next.entries.push(charge.entry);
        if charge.count.is_some() {
            next.released_count = charge.count;
        }
        if let Some(path) = &self.path {
            write_atomically(path, &next)?;
            self.writes += 1;
        }
        self.file = next;
        Ok(())
    }

    /// The budget this ledger was first bound to.
    pub fn limit(&self) -> Option<Limit> {
        self.file.limit
    }

    /// Bind the ledger to `limit` the first time; later, refuse a larger
    /// epsilon or delta than it was bound to (spending is keyed to the data,
    /// so the budget must be too).
    pub fn bind_limit(&mut self, limit: Limit) -> Result<(), PrivacyError> {
        let _lock = match &self.path {
            Some(path) => {
                let guard = lock(&lock_path(path))?;
                self.file = read(path)?.ok_or_else(|| ledger_err(path, "disappeared while in use"))?;
                Some(guard)
            }
            None => None,
        };
        match self.file.limit {
            Some(bound) if limit.epsilon > bound.epsilon || limit.delta > bound.delta => {
                Err(PrivacyError::Invalid(format!(
                    "this data's budget is epsilon {} at delta {}; a larger one (epsilon {} at delta \
                     {}) is refused. Lower the configured budget, or forget the spending on purpose \
                     with `medfed privacy ledger-reset`",
                    bound.epsilon, bound.delta, limit.epsilon, limit.delta
                )))
            }
            Some(_) => Ok(()),
            None => {
                let mut next = self.file.clone();
                next.limit = Some(limit);
                if let Some(path) = &self.path {
                    write_atomically(path, &next)?;
                    self.writes += 1;
                }
                self.file = next;
                Ok(())
            }
        }
    }

    /// Delete the ledger file `file_name` under `dir` and its index line:
    /// its spent budget is forgotten. Returns the file removed, if any.
    pub fn reset(dir: &Path, file_name: &str) -> Result<Option<PathBuf>, PrivacyError> {
        if file_name.contains('/') || file_name.contains('\\') || !file_name.ends_with(".json") {
            return Err(PrivacyError::Invalid(format!(
                "'{file_name}' is not a ledger file name (e.g. breast_cancer__0123456789abcdef.json)"
            )));
        }
        let path = dir.join(file_name);
        let _lock = lock(&lock_path(&path))?;
        let removed = match std::fs::remove_file(&path) {
            Ok(()) => Some(path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ledger_err(&path, e.to_string())),
        };
        remove_from_index(dir, file_name)?;
        Ok(removed)
    }
}

fn lock_path(ledger: &Path) -> PathBuf {
    ledger.with_extension("lock")
}

/// An exclusive lock on `path` (created if missing), held until dropped.
/// Blocks while another process holds it.
fn lock(path: &Path) -> Result<File, PrivacyError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| ledger_err(path, format!("cannot open the lock file: {e}")))?;
    file.lock()
        .map_err(|e| ledger_err(path, format!("cannot lock: {e}")))?;
    Ok(file)
}

fn read(path: &Path) -> Result<Option<LedgerFile>, PrivacyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ledger_err(path, e.to_string())),
    };
    let version = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["version"].as_u64());
    if let Some(v) = version.filter(|&v| v != u64::from(VERSION)) {
        return Err(ledger_err(
            path,
            format!(
                "is a version {v} ledger; this medfed reads version {VERSION} (ledgers keyed by the \
                 data's fingerprint) and refuses to guess what was spent"
            ),
        ));
    }
    let file: LedgerFile = serde_json::from_str(&text).map_err(|e| {
        ledger_err(
            path,
            format!("unreadable ({e}); refusing to guess what was spent"),
        )
    })?;
    if file.orders != default_orders() || file.rdp.len() != file.orders.len() {
        return Err(ledger_err(path, "its RDP orders differ from this accountant's"));
    }
    if DataFingerprint::parse(&file.fingerprint).is_none() {
        return Err(ledger_err(path, "its fingerprint is not 64 hex digits"));
    }
    Ok(Some(file))
}

fn sync_dir(dir: &Path) -> Result<(), PrivacyError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ledger_err(dir, format!("cannot fsync the directory: {e}")))
}

fn write_atomically(path: &Path, file: &LedgerFile) -> Result<(), PrivacyError> {
    let err = |message: String| ledger_err(path, message);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(file).map_err(|e| err(e.to_string()))?;
    {
        let mut f = File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(text.as_bytes()).map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    // The rename is durable only once the directory entry is.
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn index_lines(dir: &Path) -> Result<Vec<String>, PrivacyError> {
    let path = dir.join(INDEX);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ledger_err(&path, e.to_string())),
    }
}

fn index_lists(dir: &Path, name: &str) -> Result<bool, PrivacyError> {
    let _lock = lock(&dir.join(format!("{INDEX}.lock")))?;
    Ok(index_lines(dir)?.iter().any(|l| l == name))
}

fn append_to_index(dir: &Path, name: &str) -> Result<(), PrivacyError> {
    let path = dir.join(INDEX);
    let _lock = lock(&dir.join(format!("{INDEX}.lock")))?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| ledger_err(&path, e.to_string()))?;
    writeln!(f, "{name}").map_err(|e| ledger_err(&path, e.to_string()))?;
    f.sync_all().map_err(|e| ledger_err(&path, e.to_string()))?;
    sync_dir(dir)
}

fn remove_from_index(dir: &Path, name: &str) -> Result<(), PrivacyError> {
    let path = dir.join(INDEX);
    let _lock = lock(&dir.join(format!("{INDEX}.lock")))?;
    let kept: Vec<String> = index_lines(dir)?.into_iter().filter(|l| l != name).collect();
    let tmp = dir.join(format!("{INDEX}.tmp"));
    let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&tmp, text)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| ledger_err(&path, e.to_string()))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::rdp::compose;

    pub(crate) fn key(dataset: &str, byte: char) -> LedgerKey {
        LedgerKey {
            dataset: dataset.into(),
            fingerprint: DataFingerprint::parse(&byte.to_string().repeat(64)).unwrap(),
        }
    }

    fn entry(round: u32) -> LedgerEntry {
        LedgerEntry {
            unix_time: 0,
            run: "r".into(),
            hospital: "h1".into(),
            round,
            mechanism: "dp-sgd".into(),
            sampling_rate: 0.2,
            noise_multiplier: 2.0,
            steps: 10,
            summed_with: None,
        }
    }

    const WIDE: Limit = Limit {
        epsilon: 1e9,
        delta: 1e-5,
    };

    fn charge(cost: &[f64], round: u32) -> Charge<'_> {
        Charge {
            cost,
            entry: entry(round),
            count: None,
            collusion: None,
        }
    }

    #[test]
    fn spending_survives_reopening_and_reset_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let cost = compose(0.2, 2.0, 10, &default_orders());
        let k = key("bc", 'a');
        let mut ledger = Ledger::open(dir.path(), &k).unwrap();
        assert_eq!(ledger.epsilon(1e-5), 0.0);
        ledger.charge(charge(&cost, 1), WIDE).unwrap();
        ledger.charge(charge(&cost, 2), WIDE).unwrap();
        let spent = ledger.epsilon(1e-5);
        assert!(spent > 0.0);
        let reopened = Ledger::open(dir.path(), &k).unwrap();
        assert_eq!(reopened.epsilon(1e-5), spent);
        assert_eq!(reopened.entries().len(), 2);
        // Other data, or the same data under another label, has its own ledger.
        assert_eq!(
            Ledger::open(dir.path(), &key("bc", 'b')).unwrap().epsilon(1e-5),
            0.0
        );
        assert_eq!(
            Ledger::open(dir.path(), &key("other", 'a'))
                .unwrap()
                .epsilon(1e-5),
            0.0
        );
        let removed = Ledger::reset(dir.path(), &k.file_name()).unwrap();
        assert!(removed.is_some());
        assert_eq!(Ledger::open(dir.path(), &k).unwrap().epsilon(1e-5), 0.0);
        assert!(Ledger::reset(dir.path(), "../x.json").is_err());
    }

    #[test]
    fn a_charge_past_the_limit_is_refused_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let cost = compose(1.0, 1.0, 1, &default_orders());
        let k = key("bc", 'c');
        let mut ledger = Ledger::open(dir.path(), &k).unwrap();
        let limit = Limit {
            epsilon: 6.0,
            delta: 1e-5,
        };
        let mut charged = 0;
        while ledger.charge(charge(&cost, 1), limit).is_ok() {
            charged += 1;
        }
        assert!(charged >= 1);
        let e = ledger.charge(charge(&cost, 1), limit).unwrap_err();
        assert!(matches!(e, PrivacyError::BudgetExhausted(_)), "{e}");
        assert_eq!(Ledger::open(dir.path(), &k).unwrap().entries().len(), charged);
    }

    #[test]
    fn a_missing_ledger_that_existed_is_an_error_not_a_fresh_budget() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("bc", 'd');
        let mut ledger = Ledger::open(dir.path(), &k).unwrap();
        ledger
            .charge(charge(&compose(1.0, 3.0, 1, &default_orders()), 1), WIDE)
            .unwrap();
        std::fs::remove_file(Ledger::path_for(dir.path(), &k)).unwrap();
        let e = Ledger::open(dir.path(), &k).unwrap_err().to_string();
        assert!(e.contains("is missing") && e.contains("no fresh budget"), "{e}");
        // Charging a ledger whose file vanished releases nothing.
        let e = ledger
            .charge(charge(&compose(1.0, 3.0, 1, &default_orders()), 2), WIDE)
            .unwrap_err();
        assert!(e.to_string().contains("disappeared"), "{e}");
    }

    #[test]
    fn a_corrupt_or_old_ledger_is_an_error_not_a_fresh_budget() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("bc", 'e');
        std::fs::write(Ledger::path_for(dir.path(), &k), "{not json").unwrap();
        let e = Ledger::open(dir.path(), &k).unwrap_err();
        assert!(e.to_string().contains("refusing to guess"), "{e}");
        std::fs::write(Ledger::path_for(dir.path(), &k), r#"{"version": 1}"#).unwrap();
        let e = Ledger::open(dir.path(), &k).unwrap_err();
        assert!(e.to_string().contains("version 1 ledger"), "{e}");
    }

    #[test]
    fn update_level_charges_are_refused_after_record_level_ones() {
        let k = key("bc", '1');
        let mut ledger = Ledger::in_memory(&k);
        let cost = compose(1.0, 3.0, 1, &default_orders());
        ledger.charge(charge(&cost, 1), WIDE).unwrap();
        let mut update = charge(&cost, 2);
        update.entry.mechanism = "update".into();
        let e = ledger.charge(update, WIDE).unwrap_err().to_string();
        assert!(e.contains("hospital-level guarantee"), "{e}");
        // The other way round is fine: a hospital-level guarantee covers records.
        let mut fresh = Ledger::in_memory(&key("bc", '2'));
        let mut update = charge(&cost, 1);
        update.entry.mechanism = "update".into();
        fresh.charge(update, WIDE).unwrap();
        fresh.charge(charge(&cost, 2), WIDE).unwrap();
    }

    #[test]
    fn a_nan_cost_is_refused() {
        let mut ledger = Ledger::in_memory(&key("bc", '3'));
        let cost = vec![f64::NAN; default_orders().len()];
        assert!(ledger.charge(charge(&cost, 1), WIDE).is_err());
        assert!(ledger.entries().is_empty());
    }

    #[test]
    fn the_budget_is_bound_to_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("bc", '4');
        let three = Limit {
            epsilon: 3.0,
            delta: 1e-5,
        };
        Ledger::open(dir.path(), &k).unwrap().bind_limit(three).unwrap();
        let mut again = Ledger::open(dir.path(), &k).unwrap();
        assert_eq!(again.limit(), Some(three));
        again
            .bind_limit(Limit {
                epsilon: 2.0,
                ..three
            })
            .unwrap();
        let e = again
            .bind_limit(Limit {
                epsilon: 8.0,
                ..three
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("a larger one") && e.contains("ledger-reset"), "{e}");
        assert!(again.bind_limit(Limit { delta: 1e-3, ..three }).is_err());
    }

    #[test]
    fn a_ledger_written_but_not_indexed_is_indexed_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("bc", '5');
        Ledger::open(dir.path(), &k).unwrap();
        std::fs::write(dir.path().join(INDEX), "").unwrap();
        Ledger::open(dir.path(), &k).unwrap();
        std::fs::remove_file(Ledger::path_for(dir.path(), &k)).unwrap();
        assert!(Ledger::open(dir.path(), &k).is_err());
    }

    #[test]
    fn the_count_is_released_once() {
        let k = key("bc", 'f');
        let mut ledger = Ledger::in_memory(&k);
        let cost = compose(1.0, 10.0, 1, &default_orders());
        let count = Some(ReleasedCount {
            value: 90,
            noise_multiplier: 10.0,
        });
        ledger
            .charge(
                Charge {
                    cost: &cost,
                    entry: entry(0),
                    count,
                    collusion: None,
                },
                WIDE,
            )
            .unwrap();
        assert_eq!(ledger.released_count(), count);
        assert!(ledger
            .charge(
                Charge {
                    cost: &cost,
                    entry: entry(0),
                    count,
                    collusion: None,
                },
                WIDE
            )
            .is_err());
    }
}
