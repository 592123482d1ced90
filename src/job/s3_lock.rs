//! One writer per S3 output: a lease on `PREFIX/.uqcast-run.lock`.
//!
//! An object store has no file locks, and a killed run cannot release
//! anything, so the lock is a lease. It is created only if absent (a
//! conditional put), renewed by its holder every fifth of the lease (a put
//! conditional on the ETag the holder last wrote), and taken over by a new
//! run only once it has gone a whole lease ([`lease`]) without renewal (a put
//! conditional on the stale ETag, so of two runs taking over, one wins). A
//! holder that finds its lease taken stops before writing another step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};

/// How long a lock may go unrenewed before it is taken for a killed run's:
/// `UQCAST_S3_LOCK_LEASE` seconds, 300 by default. A shorter lease lets a
/// killed run's successor start sooner and needs a steadier connection.
pub fn lease() -> Result<Duration> {
    let Ok(text) = std::env::var("UQCAST_S3_LOCK_LEASE") else {
        return Ok(Duration::from_secs(300));
    };
    match text.trim().parse::<u64>() {
        Ok(seconds) if seconds >= 2 => Ok(Duration::from_secs(seconds)),
        _ => bail!("UQCAST_S3_LOCK_LEASE = '{text}': expected whole seconds, at least 2"),
    }
}

#[derive(Debug)]
pub struct S3Lock {
    store: Arc<AmazonS3>,
    lease: Duration,
    path: ObjectPath,
    url: String,
    lost: Arc<AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
}

/// Who holds the lock, as the lock object says it.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "an unknown host".into());
    format!(
        "pid {} on {host}, since {}",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

fn put_mode(mode: PutMode) -> PutOptions {
    PutOptions {
        mode,
        ..PutOptions::default()
    }
}

impl S3Lock {
    /// Takes the lock at `path` (`url` for messages) or says who holds it.
    pub async fn acquire(store: Arc<AmazonS3>, path: ObjectPath, url: String) -> Result<Self> {
        let lease = lease()?;
        let body = holder();
        let created = store
            .put_opts(&path, body.clone().into(), put_mode(PutMode::Create))
            .await;
        let version = match created {
            Ok(r) => UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            },
            Err(object_store::Error::AlreadyExists { .. }) => {
                Self::take_over_stale(&store, &path, &url, body.clone(), lease).await?
            }
            Err(e) => return Err(e).with_context(|| format!("{url}: cannot take the run lock")),
        };
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn(renew(
            store.clone(),
            path.clone(),
            version,
            body,
            lease,
            lost.clone(),
        ));
        Ok(Self {
            store,
            lease,
            path,
            url,
            lost,
            renewal,
        })
    }

    /// The existing lock's version, replaced by ours, if it is stale.
    async fn take_over_stale(
        store: &AmazonS3,
        path: &ObjectPath,
        url: &str,
        body: String,
        lease: Duration,
    ) -> Result<UpdateVersion> {
        let meta = store
            .head(path)
            .await
            .with_context(|| format!("{url}: cannot read the run lock"))?;
        let age = (chrono::Utc::now() - meta.last_modified)
            .num_seconds()
            .max(0);
        if age < lease.as_secs() as i64 {
            let held_by = match store.get(path).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default(),
                Err(_) => String::new(),
            };
            bail!(
                "another uqcast run ({held_by}) is writing this table and holds {url}, renewed \
                 {age} s ago; wait for it to end, or write to another --output (a lock left \
                 unrenewed for {} s, a killed run's, is taken over)",
                lease.as_secs()
            );
        }
        let stale = UpdateVersion {
            e_tag: meta.e_tag,
            version: meta.version,
        };
        let replaced = store
            .put_opts(path, body.into(), put_mode(PutMode::Update(stale)))
            .await;
        match replaced {
            Ok(r) => {
                eprintln!(
                    "warning: {url} was last renewed {age} s ago (a killed run's); taking it over"
                );
                Ok(UpdateVersion {
                    e_tag: r.e_tag,
                    version: r.version,
                })
            }
            Err(object_store::Error::Precondition { .. }) => {
                bail!("{url}: another run took over this stale lock first; wait for it to end")
            }
            Err(e) => Err(e).with_context(|| format!("{url}: cannot take over the run lock")),
        }
    }

    /// An error once the lease has been lost (renewal failed for longer
    /// than the lease, or another run took it): the run must not write on.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            bail!(
                "{}: this run lost its lock (not renewed for {} s, or taken over); stopping \
                 before writing another step",
                self.url,
                self.lease.as_secs()
            );
        }
        Ok(())
    }

    /// Stops renewing and deletes the lock, unless it was lost to another run.
    pub async fn release(self) {
        self.renewal.abort();
        if !self.lost.load(Ordering::SeqCst) {
            let _ = self.store.delete(&self.path).await;
        }
    }
}

/// Renews the lease every fifth of it until aborted; marks it lost when another run has
/// replaced it or renewals have failed for a whole lease.
async fn renew(
    store: Arc<AmazonS3>,
    path: ObjectPath,
    mut version: UpdateVersion,
    body: String,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    let every = lease / 5;
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let renewed = store
            .put_opts(
                &path,
                body.clone().into(),
                put_mode(PutMode::Update(version.clone())),
            )
            .await;
        match renewed {
            Ok(r) => {
                version = UpdateVersion {
                    e_tag: r.e_tag,
                    version: r.version,
                };
                last_renewed = tokio::time::Instant::now();
            }
            Err(object_store::Error::Precondition { .. }) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // A brief outage: try again at the next renewal, within the lease.
            Err(_) if last_renewed.elapsed() < lease - every => {}
            Err(_) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}
