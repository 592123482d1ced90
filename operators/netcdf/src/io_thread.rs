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
//!
//! The netcdf crate unwraps some libnetcdf errors (listing a damaged file's
//! variables, a name that is not UTF-8). [`run_on`] turns such a panic into
//! an error naming the file, printed as one line like any other error; a
//! crash inside libnetcdf or HDF5 is reported naming the file too
//! ([`crate::fatal`]).

use std::cell::{Cell, RefCell};
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
    /// Set while a [`run_on`] job runs: its panics become errors, so the
    /// panic hook keeps quiet about them.
    static CAUGHT: Cell<bool> = const { Cell::new(false) };
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
                // libnetcdf silences HDF5's error printer only on the thread
                // where it first sets HDF5 up, which need not be this one.
                crate::hdf5_ffi::silence_errors();
                quiet_when_caught();
                crate::fatal::install();
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

/// Runs `f` on the I/O thread for the file `path`; a panic in it (the
/// netcdf crate's, on a damaged file) is returned as
/// [`NetcdfError::Library`] naming the file.
pub fn run_on<R: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    let path = path.to_path_buf();
    run(move || {
        let _reading = crate::fatal::Reading::new(&path);
        let outer = CAUGHT.with(|c| c.replace(true));
        let result = catch_unwind(AssertUnwindSafe(f));
        CAUGHT.with(|c| c.set(outer));
        result.unwrap_or_else(|panic| {
            Err(NetcdfError::Library {
                path,
                problem: panic_problem(panic.as_ref()),
            })
        })
    })
}

/// Chains a panic hook that says nothing of a panic [`run_on`] catches.
fn quiet_when_caught() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !CAUGHT.with(Cell::get) {
            previous(info);
        }
    }));
}

/// A caught panic's message; an unwrapped libnetcdf status as libnetcdf's
/// own words (`Netcdf(-101)` → "NetCDF: HDF error").
fn panic_problem(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    let status = message
        .split_once("Netcdf(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .and_then(|(code, _)| code.parse::<i32>().ok());
    match status {
        Some(code) => netcdf::Error::Netcdf(code).to_string(),
        None => message.to_string(),
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
        run_on(path, move || {
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
        run_on(&self.path, move || {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in a job is the file's error, in libnetcdf's words where it
    /// unwrapped a libnetcdf status, and the I/O thread carries on.
    #[test]
    fn a_panic_on_a_file_is_its_error() {
        let path = Path::new("/data/damaged.nc");
        let err = run_on(path, || -> Result<()> {
            panic!("called `Result::unwrap()` on an `Err` value: Netcdf(-101)")
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/data/damaged.nc: libnetcdf failed on it (corrupt file?): netcdf error(-101): \
             NetCDF: HDF error"
        );
        let err = run_on(path, || -> Result<()> {
            panic!("Dimension did not have a valid name")
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("Dimension did not have a valid name"),
            "{err}"
        );
        assert_eq!(run_on(path, || Ok(7)).unwrap(), 7);
    }
}
