//! How a session's errors name the files a scan reads. A scan may read a
//! local copy of something its user named otherwise (an S3 object fetched
//! into a cache); its errors come from code that knows only the copy, and
//! a session that made the copy knows what the user called it.

use std::fmt;
use std::sync::Arc;

use datafusion::error::DataFusionError;

/// A session extension: rewrites the file names in the messages of a scan's
/// errors (set with `SessionConfig::with_extension`).
#[derive(Clone)]
pub struct FileNames {
    rename: Arc<dyn Fn(&str) -> String + Send + Sync>,
    as_messages: bool,
}

impl FileNames {
    /// `rename` rewrites a message, naming each copy as its user knows it.
    pub fn new(rename: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        Self {
            rename: Arc::new(rename),
            as_messages: false,
        }
    }

    /// The same, passing every error on as its message, for a process that
    /// reports errors in their debug form (a Ballista executor, to its
    /// scheduler): the message, not the error's fields, is what is read.
    pub fn as_messages(self) -> Self {
        Self {
            as_messages: true,
            ..self
        }
    }

    /// `e` with its message rewritten; `e` itself where nothing changes
    /// (unless passed on as messages), else of the same kind where the kind
    /// is only a message.
    pub fn apply(&self, e: DataFusionError) -> DataFusionError {
        let message = e.message().into_owned();
        let named = (self.rename)(&message);
        match e {
            DataFusionError::Execution(_) => DataFusionError::Execution(named),
            DataFusionError::Plan(_) => DataFusionError::Plan(named),
            e if named == message && !self.as_messages => e,
            _ => DataFusionError::External(named.into()),
        }
    }
}

impl fmt::Debug for FileNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileNames")
            .field("as_messages", &self.as_messages)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetcdfError;

    fn to_urls() -> FileNames {
        FileNames::new(|m| m.replace("/cache/s3/b/", "s3://b/"))
    }

    #[test]
    fn copies_are_named_as_their_users_know_them() {
        let e: DataFusionError = NetcdfError::NotFound {
            path: "/cache/s3/b/era5/a.nc".into(),
        }
        .into();
        let named = to_urls().apply(e);
        assert_eq!(
            named.to_string(),
            "External error: s3://b/era5/a.nc: no such file, directory or glob match"
        );

        let e = DataFusionError::Execution("/cache/s3/b/x.nc: truncated".into());
        assert_eq!(
            to_urls().apply(e).to_string(),
            "Execution error: s3://b/x.nc: truncated"
        );
    }

    #[test]
    fn errors_naming_no_copy_are_left_as_they_are() {
        let e: DataFusionError = NetcdfError::NotFound {
            path: "/data/a.nc".into(),
        }
        .into();
        let same = to_urls().apply(e);
        // Still the operator's own error, not a rewritten message.
        let DataFusionError::External(inner) = same else {
            panic!("kind changed: {same}");
        };
        assert!(inner.downcast_ref::<NetcdfError>().is_some());
    }

    #[test]
    fn as_messages_every_error_debugs_as_its_message() {
        let e: DataFusionError = NetcdfError::NotFound {
            path: "/data/a.nc".into(),
        }
        .into();
        assert!(format!("{e:?}").contains("NotFound { path:"), "{e:?}");
        let e = to_urls().as_messages().apply(e);
        assert_eq!(
            format!("{e:?}"),
            "External(\"/data/a.nc: no such file, directory or glob match\")"
        );
    }
}
