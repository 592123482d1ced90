//! Damaged Parquet objects, named as local files are ([`footers`]).
//!
//! DataFusion reads an `s3://` Parquet table in place, and names the
//! table's location, or nothing, when an object is damaged. After a
//! registration fails, each object's footer is checked (one ranged read of
//! its last 8 bytes: an object whose footer claims more metadata than it
//! holds once ended `uqcast` in an overflow panic at registration); after
//! a registration or a query fails with an error only a damaged object
//! explains, the objects are read again, a few at a time, to name the
//! first that does not read. Neither runs before: registration reads every
//! footer already, and checking them first cost a request per object
//! (13 s of a 23 s query over 4,972 objects on the loopback server).

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use super::S3Location;
use crate::session::footers;

/// The first object of the Parquet table at `location` whose footer is
/// damaged, named by its URL in the error; `None` when every footer is
/// sound, or the objects cannot be listed.
pub async fn bad_footer(location: &S3Location) -> Option<anyhow::Error> {
    let (store, objects) = super::objects_of(location).await.ok()?;
    let named = super::select(location, &objects).ok()?;
    check_footers(store.as_ref(), location, &named).await.err()
}

/// Checks the footer of every object in `objects` (those of a Parquet
/// table at `location`), naming the first damaged one by its URL.
async fn check_footers(
    store: &dyn ObjectStore,
    location: &S3Location,
    objects: &[ObjectMeta],
) -> Result<()> {
    futures::stream::iter(
        objects
            .iter()
            .map(|meta| check_footer(store, location, meta)),
    )
    .buffered(super::headers::PARALLEL_HEADERS)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

async fn check_footer(
    store: &dyn ObjectStore,
    location: &S3Location,
    meta: &ObjectMeta,
) -> Result<()> {
    let url = location.url(meta.location.as_ref());
    let len = meta.size;
    let mut tail = [0u8; 8];
    if len >= 8 {
        let bytes = store
            .get_range(&meta.location, len - 8..len)
            .await
            .with_context(|| format!("{url}: cannot read the footer"))?;
        if bytes.len() != 8 {
            bail!("{url}: its last 8 bytes came back as {} bytes", bytes.len());
        }
        tail.copy_from_slice(&bytes);
    }
    match footers::footer_problem(len, &tail, "object") {
        Some(problem) => bail!("{url}: {problem}"),
        None => Ok(()),
    }
}

/// Whole objects read at once while looking for a damaged one: the search
/// waits on round trips, and an object is held whole until judged, so few.
const PARALLEL_OBJECTS: usize = 4;

/// The URL of the first object of the Parquet table at `location` that
/// `judge` finds damaged ([`footers::unreadable`] for its metadata,
/// [`footers::undecodable`] for every page), with why. `None` when none
/// is, or the location is not a Parquet table. Reads the objects whole,
/// [`PARALLEL_OBJECTS`] at a time, in listing order: only after a failure.
pub async fn first_damaged(
    location: &S3Location,
    judge: fn(Bytes) -> Option<String>,
) -> Option<(String, String)> {
    let (store, objects) = super::objects_of(location).await.ok()?;
    let named = super::select(location, &objects).ok()?;
    if !named
        .iter()
        .all(|o| super::extension(o.location.as_ref()) == "parquet")
    {
        return None;
    }
    let store = store.as_ref();
    let verdicts = futures::stream::iter(named).map(|meta| async move {
        let url = location.url(meta.location.as_ref());
        let fetched = match store.get(&meta.location).await {
            Ok(object) => object.bytes().await,
            Err(e) => Err(e),
        };
        let cause = match fetched {
            Err(e) => Some(e.to_string()),
            Ok(bytes) => match tokio::task::spawn_blocking(move || judge(bytes)).await {
                Ok(cause) => cause,
                Err(e) => Some(e.to_string()),
            },
        };
        cause.map(|cause| (url, cause))
    });
    // In listing order, so the object named is the first damaged one
    // whatever finishes first; the search stops there.
    let mut verdicts = std::pin::pin!(verdicts.buffered(PARALLEL_OBJECTS));
    while let Some(verdict) = verdicts.next().await {
        if verdict.is_some() {
            return verdict;
        }
    }
    None
}
