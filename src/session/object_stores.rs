//! Object stores found by URL: a scheduler or executor is handed plans that
//! name `s3://` Parquet files without ever having registered their bucket,
//! so its sessions connect to a bucket the first time a plan names it,
//! from this process's AWS environment (as `uqcast sql` does for a table).

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use url::Url;

use super::s3::{S3Location, connect};

/// DataFusion's registry, which also connects to any `s3://` bucket asked for.
#[derive(Debug, Default)]
pub struct ConnectingRegistry {
    known: DefaultObjectStoreRegistry,
}

impl ConnectingRegistry {
    /// The process's registry: every session and task of a scheduler or
    /// executor shares its stores, and their connection pools.
    pub fn shared() -> Arc<Self> {
        static SHARED: std::sync::OnceLock<Arc<ConnectingRegistry>> = std::sync::OnceLock::new();
        SHARED.get_or_init(Arc::default).clone()
    }
}

impl ObjectStoreRegistry for ConnectingRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let known = self.known.get_store(url);
        if known.is_ok() || !url.scheme().eq_ignore_ascii_case("s3") {
            return known;
        }
        let bucket = url.host_str().unwrap_or_default();
        let location = S3Location {
            bucket: bucket.to_string(),
            key: String::new(),
        };
        let store: Arc<dyn ObjectStore> = connect(&location)
            .map_err(|e| DataFusionError::Execution(format!("s3://{bucket}: {e:#}")))?;
        self.known.register_store(url, store.clone());
        Ok(store)
    }
}
