//! The store's one writing connection, on a thread of its own. Jobs run in
//! order, each in its own transaction: `call` waits for the result (the
//! round commit), `queue` does not (the event log).

use std::sync::mpsc;

use rusqlite::{Connection, Transaction};

use super::{Result, StoreError};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

pub struct Writer {
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: String,
}

impl Writer {
    pub fn start(mut conn: Connection, path: String) -> Writer {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("medfed-store".into())
            .spawn(move || {
                for job in queue {
                    job(&mut conn);
                }
            })
            .expect("the store's writer thread starts");
        Writer {
            jobs: Some(jobs),
            thread: Some(thread),
            path,
        }
    }

    fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// Run `f` in one transaction and wait until it is committed (durable:
    /// `synchronous=FULL`).
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = mpsc::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(in_transaction(conn, f));
        });
        let gone = || StoreError::Refused(format!("store {}: its writer has stopped", self.path));
        if !self.send(job) {
            return Err(gone());
        }
        answer
            .recv()
            .map_err(|_| gone())?
            .map_err(|source| StoreError::Sql {
                path: self.path.clone(),
                source,
            })
    }

    /// Queue `f` without waiting; a failure is logged with `what`.
    pub fn queue(
        &self,
        what: &'static str,
        f: impl FnOnce(&Transaction) -> rusqlite::Result<()> + Send + 'static,
    ) {
        let path = self.path.clone();
        let job: Job = Box::new(move |conn| {
            if let Err(e) = in_transaction(conn, f) {
                tracing::error!(store = %path, "cannot record {what}: {e}");
            }
        });
        if !self.send(job) {
            tracing::error!(store = %self.path, "cannot record {what}: the store's writer has stopped");
        }
    }

    /// Wait until everything queued so far is written.
    pub fn flush(&self) -> Result<()> {
        self.call(|_| Ok(()))
    }
}

/// Everything queued is written and the connection closed (the WAL
/// checkpointed) before the store is gone.
impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn in_transaction<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}
