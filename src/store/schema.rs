//! The store's schema and its migrations, numbered by `PRAGMA user_version`.
//! A migration is appended, never edited: a store written by version N is
//! brought to the newest one step by step, in one transaction each.

use rusqlite::Connection;

/// "MDFD": marks a SQLite file as a medfed store.
const APPLICATION_ID: i64 = 0x4D44_4644;

#[derive(Debug)]
pub enum SchemaError {
    Sql(rusqlite::Error),
    Refused(String),
}

impl SchemaError {
    /// As the store's error, naming the file.
    pub fn at(self, path: &str) -> super::StoreError {
        match self {
            SchemaError::Sql(source) => super::StoreError::Sql {
                path: path.to_string(),
                source,
            },
            SchemaError::Refused(message) => super::StoreError::Invalid {
                path: path.to_string(),
                message,
            },
        }
    }
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> Self {
        SchemaError::Sql(e)
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: runs, rounds, participation, privacy, events, checkpoints, models.
    r#"
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        started_at REAL NOT NULL,
        ended_at REAL,
        -- running | finished | stopped | aborted | abandoned
        status TEXT NOT NULL,
        -- of the configuration, the data and the held-out set
        fingerprint TEXT NOT NULL,
        config TEXT NOT NULL,
        -- JSON list of hospitals left out (site withdrawal)
        excluded TEXT NOT NULL DEFAULT '[]',
        -- "task:version" this run's models replace (site withdrawal)
        replaces TEXT
    );
    CREATE TABLE run_tasks (
        run_id TEXT NOT NULL REFERENCES runs(id),
        task TEXT NOT NULL,
        target_rounds INTEGER NOT NULL,
        -- JSON list of the model's input columns, in order (tables)
        features TEXT,
        status TEXT NOT NULL DEFAULT 'running',
        reason TEXT,
        -- the task's result as `medfed run --json` shows it, once the run ended
        report TEXT,
        PRIMARY KEY (run_id, task)
    );
    CREATE TABLE rounds (
        run_id TEXT NOT NULL REFERENCES runs(id),
        task TEXT NOT NULL,
        round INTEGER NOT NULL,
        participants INTEGER NOT NULL,
        accuracy REAL,
        loss REAL,
        f1 REAL,
        auc REAL,
        seconds REAL,
        -- the whole round record (JSON): what a resumed run reports
        record TEXT NOT NULL,
        committed_at REAL NOT NULL,
        PRIMARY KEY (run_id, task, round)
    );
    CREATE TABLE participation (
        run_id TEXT NOT NULL,
        task TEXT NOT NULL,
        round INTEGER NOT NULL,
        hospital TEXT NOT NULL,
        -- accepted | rejected | declined | late | departed
        outcome TEXT NOT NULL,
        reason TEXT,
        samples INTEGER,
        PRIMARY KEY (run_id, task, round, hospital)
    );
    CREATE TABLE privacy (
        run_id TEXT NOT NULL,
        task TEXT NOT NULL,
        round INTEGER NOT NULL,
        hospital TEXT NOT NULL,
        mechanism TEXT NOT NULL,
        noise_multiplier REAL NOT NULL,
        -- lifetime epsilon of the hospital's dataset after this round, as it reported
        epsilon REAL NOT NULL,
        budget REAL NOT NULL,
        delta REAL NOT NULL,
        PRIMARY KEY (run_id, task, round, hospital)
    );
    CREATE TABLE checkpoints (
        run_id TEXT NOT NULL,
        task TEXT NOT NULL,
        round INTEGER NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        strategy TEXT NOT NULL,
        totals TEXT NOT NULL,
        privacy TEXT NOT NULL,
        PRIMARY KEY (run_id, task)
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT,
        at REAL NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
    CREATE TABLE models (
        task TEXT NOT NULL,
        version INTEGER NOT NULL,
        run_id TEXT NOT NULL REFERENCES runs(id),
        round INTEGER NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        metrics TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at REAL NOT NULL,
        -- the version this one replaces (site withdrawal)
        replaces INTEGER,
        PRIMARY KEY (task, version),
        UNIQUE (run_id, task)
    );
    "#,
    // 2: the audit logs' entries, line for line (a cut-off file shows).
    r#"
    CREATE TABLE audit (
        log TEXT NOT NULL,
        seq INTEGER NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (log, seq)
    );
    "#,
    // 3: the settings a run set for a task instead of the configured ones
    // (JSON; NULL: the configured ones), what a resumed run carries on with.
    r#"
    ALTER TABLE run_tasks ADD COLUMN settings TEXT;
    "#,
];

/// The newest schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// A store opened to read must be a medfed store of exactly this schema
/// (an older one is migrated by the next writer that opens it).
pub fn check_readable(conn: &Connection) -> Result<(), SchemaError> {
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if app != APPLICATION_ID {
        return Err(SchemaError::Refused("is not a medfed store".into()));
    }
    if version != VERSION {
        return Err(SchemaError::Refused(format!(
            "has schema {version}, this medfed reads {VERSION}: open it with `medfed serve` or \
             `medfed coordinator` of this version first (they migrate it), or use the medfed that wrote it"
        )));
    }
    Ok(())
}

/// Settings, integrity check and migrations. `existed`: the file was there.
pub fn prepare(conn: &Connection, existed: bool) -> Result<(), SchemaError> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    if existed {
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| {
                SchemaError::Refused(format!(
                    "cannot be read as a database ({e}); it was left untouched"
                ))
            })?;
        if check != "ok" {
            return Err(SchemaError::Refused(format!(
                "fails SQLite's integrity check ({check}); it was left untouched: restore it from a \
                 backup (`medfed store backup`)"
            )));
        }
    }
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if app != APPLICATION_ID && (app != 0 || tables > 0) {
        return Err(SchemaError::Refused(
            "is an SQLite database of another application, not a medfed store; it was left untouched".into(),
        ));
    }
    if version > VERSION {
        return Err(SchemaError::Refused(format!(
            "was written by a newer medfed (schema {version}; this one knows up to {VERSION})"
        )));
    }
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        return Err(SchemaError::Refused(format!(
            "cannot use write-ahead logging here (journal mode {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = i as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {migration}; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {to}; COMMIT;"
        ))?;
    }
    Ok(())
}
