//! What ends the process from inside libnetcdf: a crash, or a call that
//! never returns. Both are C libraries that trust a file's metadata. One
//! damaged byte of a NetCDF4 file made HDF5 copy through a wild pointer
//! (SIGSEGV in `H5HG_read`); another made it loop in the same code. No
//! process recovers from either, but it can say which file did it. While
//! the I/O thread works on a file ([`Reading`]):
//! - a fault on that thread prints one line naming the file, as errors are
//!   printed, and exits with status 1;
//! - a call on it that has computed for [`LOOP_VAR`] seconds of the
//!   thread's CPU time (60 unless set) does the same from a watchdog
//!   thread: a loop burns CPU, where a read waiting on its storage does not,
//!   so a loop is told from a slow read long before a wall-clock limit
//!   could safely say so;
//! - so does a call that has not returned after [`STALL_VAR`] seconds of
//!   wall-clock time (600 unless set): storage that stalled for good.
//!
//! Nothing written is lost that an error would have kept: outputs are
//! renamed into place only once complete. Faults anywhere else go on to the
//! handler that was there before (Rust's stack-overflow report, or the
//! default action).

#![allow(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment variable that sets how long one libnetcdf call on a
/// file may take, in seconds.
pub const STALL_VAR: &str = "UQCAST_NETCDF_STALL_SECONDS";
/// One call reads a file's metadata or one step of one variable: seconds
/// even on slow storage. Ten minutes is a stall, not a read.
const STALL_DEFAULT: Duration = Duration::from_secs(600);
/// The environment variable that sets how much CPU time one libnetcdf call
/// on a file may take, in seconds.
pub const LOOP_VAR: &str = "UQCAST_NETCDF_LOOP_SECONDS";
/// Metadata takes milliseconds of CPU, and one step of one variable well
/// under a second even where a chunk holds a whole 0.25° global field and
/// is inflated for each step; a minute is a loop.
const LOOP_DEFAULT: Duration = Duration::from_secs(60);

/// CPU time after which the watchdog looks in the file for the damage that
/// makes HDF5 loop ([`crate::global_heap`]): well past any call on a good
/// file's metadata, so a file read quickly is never scanned.
const SCAN_AFTER: Duration = Duration::from_secs(3);

/// The signals a C library's bad memory access or arithmetic raises.
const SIGNALS: [(libc::c_int, &str); 4] = [
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGILL, "SIGILL"),
];
const CAPACITY: usize = 4096;

/// The report's start, `error: FILE: `, written by the I/O thread before
/// each job on a file; the signal handler reads it on the same thread, so
/// the two never run at once (the watchdog may read a line being replaced:
/// only after a job has run for minutes, when none is).
static LINE: [AtomicU8; CAPACITY] = [const { AtomicU8::new(0) }; CAPACITY];
/// Bytes of `LINE` in use; 0 while the I/O thread is not on a file.
static LINE_LEN: AtomicUsize = AtomicUsize::new(0);
/// The I/O thread's kernel thread id.
static IO_THREAD: AtomicI32 = AtomicI32::new(0);
/// When the outermost job on a file started: milliseconds since [`epoch`]
/// plus one; 0 while none runs.
static JOB_STARTED: AtomicU64 = AtomicU64::new(0);
/// The I/O thread's CPU time, in nanoseconds, when that job started;
/// stored before [`JOB_STARTED`].
static JOB_CPU_STARTED: AtomicU64 = AtomicU64::new(0);
/// The clock of the I/O thread's CPU time, which the watchdog reads.
static IO_CLOCK: OnceLock<libc::clockid_t> = OnceLock::new();
/// How the reports name a file: the path rewritten as the process's
/// errors are (an S3 object's cached copy by its URL).
static NAMER: OnceLock<fn(&str) -> String> = OnceLock::new();
/// The file the outermost job reads, for the watchdog to look into.
static JOB_PATH: Mutex<Option<PathBuf>> = Mutex::new(None);
/// The handlers found at installation, by signal.
static PREVIOUS: OnceLock<Vec<(libc::c_int, libc::sigaction)>> = OnceLock::new();

/// The limits [`STALL_VAR`] and [`LOOP_VAR`] set, or their defaults: wall
/// clock, then CPU time. An error says what is wrong with a value.
pub fn limits() -> Result<(Duration, Duration), String> {
    Ok((
        seconds_in(STALL_VAR, STALL_DEFAULT)?,
        seconds_in(LOOP_VAR, LOOP_DEFAULT)?,
    ))
}

fn seconds_in(var: &str, default: Duration) -> Result<Duration, String> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Ok(value) => value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&seconds| seconds > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{var}={value}: not a whole number of seconds above 0")),
        Err(std::env::VarError::NotUnicode(value)) => Err(format!(
            "{var}={value:?}: not a whole number of seconds above 0"
        )),
    }
}

/// The CPU time of the thread behind `clock`, in nanoseconds; 0 where it
/// cannot be read.
fn cpu_nanos(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec into `now`, which lives for the call.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_stamp() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Names files in the reports as `namer` rewrites their paths (once per
/// process; later calls are ignored).
pub fn name_files_with(namer: fn(&str) -> String) {
    let _ = NAMER.set(namer);
}

/// Installs the signal handler and starts the watchdog; called once, on
/// the I/O thread.
pub(crate) fn install() {
    let (stall, spin) = limits().unwrap_or((STALL_DEFAULT, LOOP_DEFAULT));
    epoch();
    let mut clock: libc::clockid_t = 0;
    // SAFETY: asks for this live thread's CPU clock, written into `clock`.
    if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
        let _ = IO_CLOCK.set(clock);
    }
    let watching = std::thread::Builder::new()
        .name("uqcast-netcdf-watch".into())
        .spawn(move || watch(stall, spin));
    if let Err(e) = watching {
        tracing::warn!("cannot start the NetCDF watchdog: {e}");
    }
    // SAFETY: gettid has no preconditions.
    IO_THREAD.store(unsafe { libc::gettid() }, Ordering::Relaxed);
    PREVIOUS.get_or_init(|| {
        let mut previous = Vec::new();
        for (signal, _) in SIGNALS {
            // SAFETY: a zeroed sigaction is a valid value to fill; the
            // handler is async-signal-safe (atomics, write, _exit,
            // sigaction) and is installed with an empty mask.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_fault as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) == 0 {
                    previous.push((signal, old));
                }
            }
        }
        previous
    });
}

/// Ends the process when one job has computed for `spin` of CPU time, or
/// has run for `stall`.
fn watch(stall: Duration, spin: Duration) {
    let (stall_ms, spin_ns) = (stall.as_millis() as u64, spin.as_nanos() as u64);
    let tick = (stall.min(spin).min(SCAN_AFTER) / 10)
        .clamp(Duration::from_millis(10), Duration::from_secs(5));
    // The job whose file was scanned (its start stamp), so a job is scanned once.
    let mut scanned = 0;
    loop {
        std::thread::sleep(tick);
        let started = JOB_STARTED.load(Ordering::Acquire);
        if started == 0 {
            continue;
        }
        let mut computed = 0;
        if let Some(&clock) = IO_CLOCK.get() {
            let cpu_started = JOB_CPU_STARTED.load(Ordering::Acquire);
            computed = cpu_nanos(clock).saturating_sub(cpu_started);
            // The same job still runs: its CPU start is the one just read.
            if computed >= spin_ns && JOB_STARTED.load(Ordering::Acquire) == started {
                end(&format!(
                    "libnetcdf has computed for {} s of CPU time in one call reading it \
                     ({LOOP_VAR}): the file is damaged (HDF5 can loop forever on one)",
                    spin.as_secs()
                ));
            }
        }
        if now_stamp().saturating_sub(started) >= stall_ms {
            end(&format!(
                "libnetcdf has not returned for {} s reading it ({STALL_VAR}): its storage \
                 stalled, or the file is damaged",
                stall.as_secs()
            ));
        }
        if computed >= SCAN_AFTER.as_nanos() as u64 && scanned != started {
            scanned = started;
            let path = JOB_PATH.lock().ok().and_then(|p| p.clone());
            let endless = path.and_then(|p| crate::global_heap::endless_collection(&p));
            if let Some((collection, object)) = endless
                && JOB_STARTED.load(Ordering::Acquire) == started
            {
                end(&format!(
                    "HDF5 loops without end on it: its global heap collection at byte \
                     {collection} holds an object of size 0 at byte {object} (the file is \
                     damaged)"
                ));
            }
        }
    }
}

/// Prints the report on the file being read, ending with `why`, and ends
/// the process.
fn end(why: &str) -> ! {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(&current());
    let _ = writeln!(stderr, "{why}");
    let _ = stderr.flush();
    // SAFETY: ends the process at once, as a failed command does.
    unsafe { libc::_exit(1) }
}

/// While alive, a fault on the I/O thread, or a stall, is reported as one
/// reading `path`.
pub(crate) struct Reading {
    outer: Vec<u8>,
}

impl Reading {
    pub(crate) fn new(path: &Path) -> Self {
        let shown_path = path.display().to_string();
        let named = NAMER
            .get()
            .map_or_else(|| shown_path.clone(), |namer| namer(&shown_path));
        let shown = crate::error::escape_controls(&named);
        let outer = current();
        set(format!("error: {shown}: ").as_bytes());
        if outer.is_empty() {
            if let Ok(mut job) = JOB_PATH.lock() {
                *job = Some(path.to_path_buf());
            }
            if let Some(&clock) = IO_CLOCK.get() {
                JOB_CPU_STARTED.store(cpu_nanos(clock), Ordering::Release);
            }
            JOB_STARTED.store(now_stamp(), Ordering::Release);
        }
        Self { outer }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if self.outer.is_empty() {
            JOB_STARTED.store(0, Ordering::Release);
            if let Ok(mut job) = JOB_PATH.lock() {
                *job = None;
            }
        }
        set(&self.outer);
    }
}

fn current() -> Vec<u8> {
    let len = LINE_LEN.load(Ordering::Relaxed);
    LINE[..len]
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect()
}

fn set(line: &[u8]) {
    // A path too long for the buffer is cut, not dropped.
    let len = line.len().min(CAPACITY);
    LINE_LEN.store(0, Ordering::Relaxed);
    for (slot, &byte) in LINE.iter().zip(&line[..len]) {
        slot.store(byte, Ordering::Relaxed);
    }
    LINE_LEN.store(len, Ordering::Relaxed);
}

extern "C" fn on_fault(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let len = LINE_LEN.load(Ordering::Relaxed);
    // SAFETY: gettid, write and _exit are async-signal-safe.
    if len > 0 && unsafe { libc::gettid() } == IO_THREAD.load(Ordering::Relaxed) {
        let name = SIGNALS
            .iter()
            .find(|(s, _)| *s == signal)
            .map_or("a signal", |(_, name)| name);
        let mut chunk = [0u8; 256];
        for part in LINE[..len].chunks(chunk.len()) {
            for (to, from) in chunk.iter_mut().zip(part) {
                *to = from.load(Ordering::Relaxed);
            }
            write_stderr(&chunk[..part.len()]);
        }
        write_stderr(b"libnetcdf crashed reading it (");
        write_stderr(name.as_bytes());
        write_stderr(b"): the file is damaged, or not what its header says\n");
        // SAFETY: ends the process at once, as a failed command does.
        unsafe { libc::_exit(1) };
    }
    // Not ours: the handler from before takes it when the faulting
    // instruction runs again.
    match PREVIOUS
        .get()
        .and_then(|previous| previous.iter().find(|(s, _)| *s == signal))
    {
        // SAFETY: sigaction and signal are async-signal-safe; `old` came
        // from sigaction.
        Some((_, old)) => unsafe {
            libc::sigaction(signal, old, std::ptr::null_mut());
        },
        None => unsafe {
            libc::signal(signal, libc::SIG_DFL);
        },
    }
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: writes `bytes.len()` bytes from a live slice to fd 2.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}
