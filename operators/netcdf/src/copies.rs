//! Files a scan reads that are not on disk yet. A session may plan a table
//! over files it has only the headers of (S3 objects it has not downloaded);
//! such a session makes each file present when a scan first needs it, so a
//! query downloads only the files of the steps it reads, or only the steps.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A session extension (`SessionConfig::with_extension`): called with each
/// file's path, the steps (indices along its time axis) a scan partition
/// will read from it, and how many of its steps the whole scan reads (all
/// partitions), before the partition opens it, on the scan's blocking
/// thread. It returns the file to open, which holds at least those steps:
/// the file itself, or a partial copy. `Err` is the message the scan fails with
/// (naming the file as its user knows it).
#[derive(Clone)]
pub struct LocalCopies {
    make_present: Arc<MakePresent>,
}

type MakePresent = dyn Fn(&Path, &[usize], usize) -> Result<PathBuf, String> + Send + Sync;

impl LocalCopies {
    pub fn new(
        make_present: impl Fn(&Path, &[usize], usize) -> Result<PathBuf, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            make_present: Arc::new(make_present),
        }
    }

    /// The file to open for `path`, holding at least `steps`, of which
    /// the scan reads `in_scan`; or why there is none.
    pub fn make_present(
        &self,
        path: &Path,
        steps: &[usize],
        in_scan: usize,
    ) -> Result<PathBuf, String> {
        (self.make_present)(path, steps, in_scan)
    }
}

impl fmt::Debug for LocalCopies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCopies").finish_non_exhaustive()
    }
}
