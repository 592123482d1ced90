//! Every libnetcdf call runs on one dedicated thread.
//!
//! libnetcdf is not thread-safe (the netcdf crate serialises calls behind a
//! global lock, so several threads gain nothing on reads), and it silences
//! HDF5's error printer only on the thread that initialised it: calls from
//! other threads print `HDF5-DIAG` noise for harmless probes. One I/O thread
//! keeps stderr clean; callers decode the raw values on their own threads, so
//! partitions still overlap decoding with reading.
//!
//! Open files live on that thread, addressed by [`RemoteFile`] handles that
//! close them when dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel, sync_channel};
use std::sync::{Mutex, OnceLock};

use crate::error::{NetcdfError, Result};

type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    static ON_IO_THREAD: RefCell<bool> = const { RefCell::new(false) };
    static FILES: RefCell<HashMap<u64, netcdf::File>> = RefCell::new(HashMap::new());
}

fn sender() -> &'static Mutex<Sender<Job>> {
    static SENDER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("uqcast-netcdf-io".into())
            .spawn(move || {
                ON_IO_THREAD.with(|f| *f.borrow_mut() = true);
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the NetCDF I/O thread: {e}");
        }
        Mutex::new(tx)
    })
}

fn submit(job: Job) -> bool {
    match sender().lock() {
        Ok(tx) => tx.send(job).is_ok(),
        Err(poisoned) => poisoned.into_inner().send(job).is_ok(),
    }
}

/// Runs `f` on the I/O thread and waits for its result (panics propagate).
pub fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    if ON_IO_THREAD.with(|flag| *flag.borrow()) {
        return f();
    }
    let (tx, rx) = sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    if !submit(job) {
        resume_unwind(Box::new("the NetCDF I/O thread is gone"));
    }
    match rx.recv() {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => resume_unwind(Box::new("the NetCDF I/O thread dropped a job")),
    }
}

/// A file held open on the I/O thread.
#[derive(Debug)]
pub struct RemoteFile {
    id: u64,
    path: PathBuf,
}

impl RemoteFile {
    pub fn open(path: &Path) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let owned = path.to_path_buf();
        run(move || {
            let file = crate::inspect::open(&owned)?;
            FILES.with(|files| files.borrow_mut().insert(id, file));
            Ok::<_, NetcdfError>(())
        })?;
        Ok(Self {
            id,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the open file on the I/O thread.
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&netcdf::File) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (id, path) = (self.id, self.path.clone());
        run(move || {
            FILES.with(|files| match files.borrow().get(&id) {
                Some(file) => f(file),
                None => Err(NetcdfError::Io {
                    path,
                    source: std::io::Error::other("file handle already closed"),
                }),
            })
        })
    }
}

impl Drop for RemoteFile {
    fn drop(&mut self) {
        let id = self.id;
        // Fire and forget: closing needs no answer.
        submit(Box::new(move || {
            FILES.with(|files| files.borrow_mut().remove(&id));
        }));
    }
}
