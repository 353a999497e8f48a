//! Where a columnar task's Parquet files are: a local file, directory or
//! glob, or `s3://bucket/prefix` (optionally with a glob in the key) in
//! S3-compatible object storage, read by byte range. Credentials and the
//! endpoint come from the standard AWS environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`), as every AWS tool reads them.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use medfed_models::data::columnar::source::{is_glob, local_files};
use medfed_models::data::columnar::{ByteSource, LocalFile};

/// The sources `location` names, sorted by name. Local paths are used as
/// given (the caller resolves relative ones).
pub fn open(location: &str) -> Result<Vec<Arc<dyn ByteSource>>> {
    if let Some(rest) = location.strip_prefix("s3://") {
        return open_s3(location, rest);
    }
    if location.contains("://") {
        bail!("'{location}': only local paths and s3:// URLs are supported");
    }
    let files = local_files(Path::new(location))?;
    files
        .iter()
        .map(|f| -> Result<Arc<dyn ByteSource>> { Ok(Arc::new(LocalFile::open(f)?)) })
        .collect()
}

/// Whether `location` is in object storage.
pub fn is_remote(location: &str) -> bool {
    location.starts_with("s3://")
}

fn open_s3(location: &str, rest: &str) -> Result<Vec<Arc<dyn ByteSource>>> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("'{location}': an S3 URL names a bucket: s3://bucket/prefix");
    }
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .with_context(|| format!("'{location}': configuring S3 access from the AWS_* environment"))?;
    let client = S3Client::start(Arc::new(store))?;
    let single = !is_glob(key) && (key.ends_with(".parquet") || key.ends_with(".parq"));
    let mut objects = if single {
        vec![client
            .head(ObjectPath::from(key))
            .with_context(|| format!("reading {location}"))?]
    } else {
        // A glob lists the directory before its first wildcard; a prefix
        // is a directory itself.
        let dir = match key.find(['*', '?', '[']) {
            Some(wildcard) => key[..wildcard].rfind('/').map_or("", |slash| &key[..slash]),
            None => key.trim_end_matches('/'),
        };
        let pattern = is_glob(key)
            .then(|| glob::Pattern::new(key))
            .transpose()
            .with_context(|| format!("'{location}': not a valid glob"))?;
        let mut listed = client
            .list(dir.to_string())
            .with_context(|| format!("listing {location}"))?;
        listed.retain(|(path, _)| {
            let name = path.as_ref();
            let file = name.rsplit('/').next().unwrap_or_default();
            match &pattern {
                Some(p) => p.matches(name),
                // A "directory" of Parquet files, as Spark writes them.
                None => {
                    (file.ends_with(".parquet") || file.ends_with(".parq")) && !file.starts_with(['_', '.'])
                }
            }
        });
        listed
    };
    objects.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    if objects.is_empty() {
        bail!("no Parquet objects at {location}");
    }
    Ok(objects
        .into_iter()
        .map(|(path, size)| -> Arc<dyn ByteSource> {
            Arc::new(S3Object {
                shown: format!("s3://{bucket}/{path}"),
                path,
                size,
                client: client.clone(),
            })
        })
        .collect())
}

/// Requests to the object store, served by one thread running its own
/// async runtime: readers on any thread (a decoder, a blocking training
/// task) wait on a plain channel, never on an async runtime of their own.
#[derive(Clone)]
struct S3Client {
    requests: Arc<Mutex<mpsc::Sender<Request>>>,
}

enum Request {
    List(String, mpsc::Sender<Result<Vec<(ObjectPath, u64)>, String>>),
    Head(ObjectPath, mpsc::Sender<Result<(ObjectPath, u64), String>>),
    Range(ObjectPath, Range<u64>, mpsc::Sender<Result<Bytes, String>>),
}

impl S3Client {
    fn start(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("medfed-s3")
            .enable_all()
            .build()
            .context("starting the object-storage client")?;
        std::thread::Builder::new()
            .name("medfed-s3-requests".into())
            .spawn(move || {
                // Each request runs as its own task: ranges for several row
                // groups are fetched concurrently.
                while let Ok(request) = rx.recv() {
                    let store = store.clone();
                    runtime.spawn(async move {
                        match request {
                            Request::List(prefix, reply) => {
                                let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
                                let listed: Result<Vec<_>, _> =
                                    store.list(prefix.as_ref()).try_collect().await;
                                let _ = reply.send(
                                    listed
                                        .map(|objects| {
                                            objects.into_iter().map(|o| (o.location, o.size)).collect()
                                        })
                                        .map_err(|e| e.to_string()),
                                );
                            }
                            Request::Head(path, reply) => {
                                let meta = store.head(&path).await;
                                let _ =
                                    reply.send(meta.map(|m| (m.location, m.size)).map_err(|e| e.to_string()));
                            }
                            Request::Range(path, range, reply) => {
                                let got = store.get_range(&path, range).await;
                                let _ = reply.send(got.map_err(|e| e.to_string()));
                            }
                        }
                    });
                }
            })
            .context("starting the object-storage client")?;
        Ok(Self {
            requests: Arc::new(Mutex::new(tx)),
        })
    }

    fn send(&self, request: Request) -> io::Result<()> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(request)
            .map_err(|_| io::Error::other("the object-storage client stopped"))
    }

    fn list(&self, prefix: String) -> Result<Vec<(ObjectPath, u64)>> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::List(prefix, tx))?;
        let listed = rx.recv().context("the object-storage client stopped")?;
        listed.map_err(anyhow::Error::msg)
    }

    fn head(&self, path: ObjectPath) -> Result<(ObjectPath, u64)> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Head(path, tx))?;
        let meta = rx.recv().context("the object-storage client stopped")?;
        meta.map_err(anyhow::Error::msg)
    }
}

/// One object, read by byte range.
struct S3Object {
    shown: String,
    path: ObjectPath,
    size: u64,
    client: S3Client,
}

impl ByteSource for S3Object {
    fn name(&self) -> &str {
        &self.shown
    }

    fn len(&self) -> u64 {
        self.size
    }

    /// One request per column chunk, not one per page.
    fn fetch_whole_chunks(&self) -> bool {
        true
    }

    fn read_range(&self, start: u64, len: usize) -> io::Result<Bytes> {
        let end = start
            .checked_add(len as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "a range past the object's end"))?;
        let (tx, rx) = mpsc::channel();
        self.client
            .send(Request::Range(self.path.clone(), start..end, tx))?;
        let bytes = rx
            .recv()
            .map_err(|_| io::Error::other("the object-storage client stopped"))?
            .map_err(io::Error::other)?;
        if bytes.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("asked for {len} bytes, got {}", bytes.len()),
            ));
        }
        Ok(bytes)
    }
}
