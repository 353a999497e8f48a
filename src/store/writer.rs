//! The store's one writing connection, on a thread of its own. Jobs run in
//! order: `call` runs one in its own transaction and waits for the result
//! (the round commit); `queue` does not wait (the event log), and queued
//! jobs that arrive together share one transaction — one fsync for a burst
//! of events, not one each — each inside a savepoint, so one failing job
//! loses nothing else.

use std::sync::mpsc;

use rusqlite::Connection;

use super::{Result, StoreError};

type Work = Box<dyn FnOnce(&mut Connection) + Send>;
type Queued = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;

enum Job {
    Call(Work),
    Queued(&'static str, Queued),
}

pub struct Writer {
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: String,
}

impl Writer {
    pub fn start(mut conn: Connection, path: String) -> Writer {
        let (jobs, queue) = mpsc::channel::<Job>();
        let shown = path.clone();
        let thread = std::thread::Builder::new()
            .name("medfed-store".into())
            .spawn(move || {
                let mut next: Option<Job> = None;
                loop {
                    let job = match next.take() {
                        Some(job) => job,
                        None => match queue.recv() {
                            Ok(job) => job,
                            Err(_) => break,
                        },
                    };
                    match job {
                        Job::Call(work) => work(&mut conn),
                        Job::Queued(what, first) => {
                            let mut batch = vec![(what, first)];
                            while let Ok(job) = queue.try_recv() {
                                match job {
                                    Job::Queued(what, f) => batch.push((what, f)),
                                    call => {
                                        next = Some(call);
                                        break;
                                    }
                                }
                            }
                            write_batch(&mut conn, batch, &shown);
                        }
                    }
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
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = mpsc::channel();
        let work: Work = Box::new(move |conn| {
            let _ = reply.send(in_transaction(conn, f));
        });
        let gone = || StoreError::Refused(format!("store {}: its writer has stopped", self.path));
        if !self.send(Job::Call(work)) {
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
        f: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) {
        if !self.send(Job::Queued(what, Box::new(f))) {
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
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

fn write_batch(conn: &mut Connection, batch: Vec<(&'static str, Queued)>, path: &str) {
    let result = (|| -> rusqlite::Result<()> {
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (what, f) in batch {
            let sp = tx.savepoint()?;
            match f(&sp) {
                Ok(()) => sp.commit()?,
                Err(e) => tracing::error!(store = %path, "cannot record {what}: {e}"),
            }
        }
        tx.commit()
    })();
    if let Err(e) = result {
        tracing::error!(store = %path, "cannot record queued events: {e}");
    }
}
