//! Plans kept across processes. Planning an object without downloading it
//! costs requests: a classic file's header and the time of every record (a
//! CDS month of hourly steps is 744 of them), a NetCDF4 file's walk. What
//! they fetched, and where the object's steps lie, is kept in
//! `CACHE/s3-plans/BUCKET/KEY.plan` under the object's stamp, so that another
//! process (the next `uqcast sql`, the next scheduled run, an executor)
//! plans an unchanged object from its listing alone.
//!
//! A kept plan is a cache entry: one of another format, for another stamp,
//! cut short or damaged (it no longer hashes to what it recorded) is passed
//! over, and the object is planned again.
//!
//! The file: a line naming the format, the object's stamp, the SHA-256 of
//! all that follows it, a line of JSON ([`Kept`]), then the fetched bytes,
//! one part after another.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use uqcast_hyperdm::checkpoint::sha256_hex;
use uqcast_netcdf::ranged::ChunkedVariable;

/// The first line of a kept plan. A change to the file's layout, or to
/// what planning fetches (a plan kept before would lack it), takes a new
/// number, so that older plans are passed over.
const FORMAT: &str = concat!("uqcast s3 plan 1 ", env!("CARGO_PKG_VERSION"));

/// What planning fetched of an object, and where its steps lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeptPlan {
    /// The bytes fetched, each with its offset in the object (a classic
    /// file's header first, at offset 0).
    pub parts: Vec<(u64, Vec<u8>)>,
    /// A NetCDF4 object's gridded variables' chunks; `None` for a classic
    /// file, whose records its header places.
    pub chunks: Option<Vec<ChunkedVariable>>,
}

/// The JSON line: everything but the bytes.
#[derive(Serialize, Deserialize)]
struct Kept {
    /// (offset, length) of each part, in the order their bytes follow.
    parts: Vec<(u64, u64)>,
    chunks: Option<Vec<ChunkedVariable>>,
}

/// Where the plan of `s3://BUCKET/KEY` is kept (not named as the object
/// is: it is not a copy of it).
pub(super) fn plan_path(cache: &Path, bucket: &str, key: &str) -> PathBuf {
    cache
        .join("s3-plans")
        .join(bucket)
        .join(format!("{key}.plan"))
}

/// Keeps `plan` for the object `stamp` describes, replacing any earlier
/// plan whole (written under a temporary name, then renamed).
pub(super) fn keep(path: &Path, stamp: &str, plan: &KeptPlan) -> Result<()> {
    let parent = path.parent().context("a plan's path has no folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("plan folder {}", parent.display()))?;
    let kept = Kept {
        parts: plan
            .parts
            .iter()
            .map(|(offset, b)| (*offset, b.len() as u64))
            .collect(),
        chunks: plan.chunks.clone(),
    };
    let mut body = serde_json::to_vec(&kept)?;
    body.push(b'\n');
    for (_, bytes) in &plan.parts {
        body.extend_from_slice(bytes);
    }
    let mut file = tempfile::Builder::new()
        .prefix(".plan-")
        .tempfile_in(parent)
        .with_context(|| format!("a plan file in {}", parent.display()))?;
    let head = format!("{FORMAT}\n{stamp}\n{}\n", sha256_hex(&body));
    file.write_all(head.as_bytes())?;
    file.write_all(&body)?;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("plan {}", path.display()))?;
    Ok(())
}

/// The plan kept at `path` for the object `stamp` describes; `None` where
/// there is none, or it is not one this build wrote for that stamp, or its
/// bytes are not what it recorded. A plan found is marked used (now), for
/// the cache's size limit.
pub(super) fn load(path: &Path, stamp: &str) -> Option<KeptPlan> {
    let data = std::fs::read(path).ok()?;
    let mut lines = data.splitn(4, |&b| b == b'\n');
    if lines.next()? != FORMAT.as_bytes() || lines.next()? != stamp.as_bytes() {
        return None;
    }
    let sha256 = lines.next()?;
    let body = lines.next()?;
    if sha256 != sha256_hex(body).as_bytes() {
        return None;
    }
    let newline = body.iter().position(|&b| b == b'\n')?;
    let kept: Kept = serde_json::from_slice(&body[..newline]).ok()?;
    let bytes = &body[newline + 1..];
    let total = kept
        .parts
        .iter()
        .try_fold(0u64, |t, (_, n)| t.checked_add(*n))?;
    if total != bytes.len() as u64 {
        return None;
    }
    let mut rest = bytes;
    let parts = kept
        .parts
        .iter()
        .map(|&(offset, n)| {
            let (part, after) = rest.split_at(n as usize);
            rest = after;
            (offset, part.to_vec())
        })
        .collect();
    super::prune::mark_used_file(path);
    Some(KeptPlan {
        parts,
        chunks: kept.chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(chunks: bool) -> KeptPlan {
        KeptPlan {
            parts: vec![
                (0, b"CDF\x01header".to_vec()),
                (4096, vec![0, 10, 255, b'\n']),
            ],
            chunks: chunks.then(|| {
                vec![ChunkedVariable {
                    name: "t2m".into(),
                    steps_per_chunk: 2,
                    chunks: vec![(0, 8192..9000), (2, 9000..9500)],
                }]
            }),
        }
    }

    #[test]
    fn a_kept_plan_reads_back_for_its_stamp_only() {
        let dir = tempfile::tempdir().unwrap();
        for chunks in [false, true] {
            let path = plan_path(dir.path(), "b", "era5/x.nc");
            keep(
                &path,
                "etag-1 2021-01-01T00:00:00+00:00 9500",
                &plan(chunks),
            )
            .unwrap();
            let stamp = "etag-1 2021-01-01T00:00:00+00:00 9500";
            assert_eq!(load(&path, stamp), Some(plan(chunks)));
            assert_eq!(load(&path, "etag-2 2021-01-01T00:00:00+00:00 9500"), None);
        }
        let left: Vec<_> = std::fs::read_dir(dir.path().join("s3-plans/b/era5"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["x.nc.plan"], "no temporary file is left");
    }

    /// A plan cut short, with a byte changed, or of another format is
    /// passed over, never read as a plan.
    #[test]
    fn a_damaged_or_foreign_plan_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = plan_path(dir.path(), "b", "x.nc");
        let stamp = "e 2021-01-01T00:00:00+00:00 9500";
        keep(&path, stamp, &plan(true)).unwrap();
        let good = std::fs::read(&path).unwrap();
        let n = good.len();
        let cut = &good[..n - 1];
        let mut flipped = good.clone();
        flipped[n - 3] ^= 1;
        let mut moved = good.clone();
        let at = good.windows(4).position(|w| w == b"9000").unwrap();
        moved[at] = b'8';
        let foreign = String::from_utf8_lossy(&good).replacen("plan 1", "plan 0", 1);
        for (what, bytes) in [
            ("cut short", cut.to_vec()),
            ("a data byte changed", flipped),
            ("a chunk's place changed", moved),
            ("another format", foreign.into_bytes()),
            ("empty", vec![]),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(load(&path, stamp), None, "{what}");
        }
    }
}
