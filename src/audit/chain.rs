//! The audit log's hash chain: each JSONL line carries the sha256 of its
//! own content and of the line before it, so an edited line no longer
//! matches its hash and a deleted (or inserted, or reordered) line breaks
//! the link to its neighbour. Pure: lines in, verdicts out.

use serde::{Deserialize, Serialize};

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry says, before it is chained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// Who: "api token from 10.0.0.7", "panel session from ...", "coordinator", "cli".
    pub actor: String,
    /// What, as a stable word: run_start_requested, run_started, run_ended,
    /// auth_failed, hospital_admitted, hospital_refused, budget_exhausted, ...
    pub action: String,
    /// Its particulars (settings, reasons, names; never patient data).
    pub details: serde_json::Value,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(flatten)]
    pub content: Content,
    /// The previous entry's hash (`GENESIS` for the first).
    pub prev: String,
    /// sha256 over `prev` and this entry's content.
    pub hash: String,
}

impl Entry {
    pub fn chain(content: Content, prev: &str) -> Entry {
        let hash = hash_of(&content, prev);
        Entry {
            content,
            prev: prev.to_string(),
            hash,
        }
    }
}

fn hash_of(content: &Content, prev: &str) -> String {
    // serde_json writes struct fields in order and object keys sorted: the
    // same content always gives the same bytes.
    let json = serde_json::to_vec(content).unwrap_or_default();
    crate::store::sha256_hex(&[prev.as_bytes(), b"\n", &json].concat())
}

/// The first problem in a log, worded for an operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Broken {
    /// 1-based line number.
    pub line: usize,
    pub problem: String,
}

/// Check every line; `Ok(entries)` when the chain is intact.
pub fn verify(text: &str) -> Result<usize, Broken> {
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    for (n, line) in (1usize..).zip(text.lines()) {
        let expected_seq = n as u64;
        if line.trim().is_empty() {
            return Err(Broken {
                line: n,
                problem: "an empty line (a line was removed or the file was cut)".into(),
            });
        }
        let entry: Entry = serde_json::from_str(line).map_err(|e| Broken {
            line: n,
            problem: format!("not an audit entry ({e})"),
        })?;
        if hash_of(&entry.content, &entry.prev) != entry.hash {
            return Err(Broken {
                line: n,
                problem: "its content does not match its hash: the line was edited".into(),
            });
        }
        if entry.prev != prev {
            return Err(Broken {
                line: n,
                problem: "it does not follow the line before it: a line was deleted, inserted or moved here"
                    .into(),
            });
        }
        if entry.content.seq != expected_seq {
            return Err(Broken {
                line: n,
                problem: format!(
                    "sequence number {} where {expected_seq} was due: entries are missing",
                    entry.content.seq
                ),
            });
        }
        prev = entry.hash;
        count += 1;
    }
    Ok(count)
}

/// The hash and sequence number to continue from after `text`'s last line
/// (the log must verify first).
pub fn tail(text: &str) -> Result<(String, u64), Broken> {
    verify(text)?;
    match text.lines().last() {
        None => Ok((GENESIS.to_string(), 0)),
        Some(line) => {
            let entry: Entry = serde_json::from_str(line).map_err(|e| Broken {
                line: text.lines().count(),
                problem: format!("not an audit entry ({e})"),
            })?;
            Ok((entry.hash, entry.content.seq))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log_of(n: u64) -> String {
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for seq in 1..=n {
            let entry = Entry::chain(
                Content {
                    seq,
                    time: format!("2026-12-04T00:00:{seq:02}Z"),
                    actor: "api token from 127.0.0.1".into(),
                    action: "run_start_requested".into(),
                    details: json!({ "rounds": seq, "tasks": ["breast_cancer"] }),
                },
                &prev,
            );
            prev = entry.hash.clone();
            out.push_str(&serde_json::to_string(&entry).unwrap());
            out.push('\n');
        }
        out
    }

    #[test]
    fn an_intact_log_verifies_and_its_tail_continues_it() {
        let log = log_of(5);
        assert_eq!(verify(&log), Ok(5));
        let (hash, seq) = tail(&log).unwrap();
        assert_eq!(seq, 5);
        assert_eq!(hash.len(), 64);
        assert_eq!(verify(""), Ok(0));
        assert_eq!(tail("").unwrap(), (GENESIS.to_string(), 0));
    }

    #[test]
    fn an_edited_line_is_found() {
        let log = log_of(5).replace("\"rounds\":3", "\"rounds\":4");
        let broken = verify(&log).unwrap_err();
        assert_eq!(broken.line, 3);
        assert!(broken.problem.contains("edited"), "{broken:?}");
    }

    #[test]
    fn a_deleted_line_is_found_but_a_cut_off_end_needs_the_store() {
        let log = log_of(5);
        let mut lines: Vec<&str> = log.lines().collect();
        lines.remove(2);
        let broken = verify(&(lines.join("\n") + "\n")).unwrap_err();
        assert_eq!(broken.line, 3);
        assert!(broken.problem.contains("deleted"), "{broken:?}");
        // Deleting the last line cannot be seen from the file alone: the
        // store's copy has it (see the audit module).
        lines.truncate(2);
        assert_eq!(verify(&(lines.join("\n") + "\n")), Ok(2));
    }
}
