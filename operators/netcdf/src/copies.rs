//! Files a scan reads that are not on disk yet. A session may plan a table
//! over files it has only the headers of (S3 objects it has not downloaded);
//! such a session makes each file present when a scan first needs it, so a
//! query downloads only the files of the steps it reads.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A session extension (`SessionConfig::with_extension`): called with each
/// file's path before a scan opens it, on the scan's blocking thread; `Err`
/// is the message the scan fails with (naming the file as its user knows it).
#[derive(Clone)]
pub struct LocalCopies {
    make_present: Arc<MakePresent>,
}

type MakePresent = dyn Fn(&Path) -> Result<(), String> + Send + Sync;

impl LocalCopies {
    pub fn new(make_present: impl Fn(&Path) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self {
            make_present: Arc::new(make_present),
        }
    }

    /// Makes `path` present, or says why it cannot be.
    pub fn make_present(&self, path: &Path) -> Result<(), String> {
        (self.make_present)(path)
    }
}

impl fmt::Debug for LocalCopies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCopies").finish_non_exhaustive()
    }
}
