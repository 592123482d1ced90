//! A size limit on the cache of S3 copies: `UQCAST_CACHE_MAX_GB`. After
//! each download or partial fetch, copies are removed least recently used
//! first until the cache fits. Removed are only copies of objects (a file
//! with its `.etag` or `.steps` beside it: whatever is needed again is
//! fetched again) and kept plans (`s3-plans/`, each a file of its own),
//! never files a training stages there, and never a copy a plan of this
//! process names (its scans may still open it). Another
//! process that planned over a removed copy fetches it again when its scan
//! opens it; one that has it open reads on (the file lives until closed).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Result, bail};

/// The environment variable holding the limit, in gigabytes.
pub const LIMIT_VARIABLE: &str = "UQCAST_CACHE_MAX_GB";

/// The limit in bytes, if one is set.
pub fn limit() -> Result<Option<u64>> {
    match std::env::var(LIMIT_VARIABLE) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            bail!("{LIMIT_VARIABLE}: not a number of gigabytes")
        }
        Ok(text) => parse_limit(&text).map(Some),
    }
}

fn parse_limit(text: &str) -> Result<u64> {
    match text.trim().parse::<f64>() {
        Ok(gb) if gb.is_finite() && gb >= 0.0 => Ok((gb * 1e9) as u64),
        _ => bail!(
            "{LIMIT_VARIABLE}={text}: not a number of gigabytes (the S3 cache's size limit, e.g. \
             50 or 0.5)"
        ),
    }
}

/// One removable copy: its files, their size on disk and when it was last used.
#[derive(Debug)]
struct Copy {
    files: Vec<PathBuf>,
    bytes: u64,
    used: SystemTime,
}

/// Marks the copy `local` used now, for [`prune`]'s order.
pub fn mark_used(local: &Path) {
    for companion in [".etag", ".steps"] {
        let path = PathBuf::from(format!("{}{companion}", local.display()));
        if let Ok(file) = std::fs::File::options().append(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }
}

/// Marks a file that is its own stamp (a kept plan) used now.
pub fn mark_used_file(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Removes the least recently used copies under `cache` until the copies
/// take at most `limit` bytes, keeping those `pinned` says to keep.
/// Returns the bytes removed.
pub fn prune(cache: &Path, limit: u64, pinned: &dyn Fn(&Path) -> bool) -> u64 {
    let mut copies: Vec<Copy> = ["s3", "s3-steps"]
        .iter()
        .flat_map(|folder| copies_below(&cache.join(folder)))
        .chain(plans_below(&cache.join("s3-plans")))
        .collect();
    let mut total: u64 = copies.iter().map(|c| c.bytes).sum();
    copies.sort_by_key(|c| c.used);
    let mut removed = 0;
    for copy in copies {
        if total <= limit {
            break;
        }
        if pinned(&copy.files[0]) {
            continue;
        }
        for file in &copy.files {
            let _ = std::fs::remove_file(file);
        }
        total -= copy.bytes;
        removed += copy.bytes;
    }
    removed
}

/// Every kept plan below `folder` (not those still being written, under
/// a temporary name starting with a dot).
fn plans_below(folder: &Path) -> Vec<Copy> {
    files_below(folder)
        .into_iter()
        .filter(|path| {
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .map(|path| {
            let used = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Copy {
                bytes: on_disk(&path),
                files: vec![path],
                used,
            }
        })
        .collect()
}

/// Every file below `folder`, at any depth.
fn files_below(folder: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Every copy below `folder`: each file with a stamp (`.etag`) or a list of
/// records (`.steps`) beside it.
fn copies_below(folder: &Path) -> Vec<Copy> {
    let mut found = Vec::new();
    for path in files_below(folder) {
        let companions: Vec<PathBuf> = [".etag", ".steps", ".steps.lock"]
            .iter()
            .map(|c| PathBuf::from(format!("{}{c}", path.display())))
            .filter(|c| c.is_file())
            .collect();
        let Some(stamp) = companions.first() else {
            continue;
        };
        let used = std::fs::metadata(stamp)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut files = vec![path];
        files.extend(companions);
        let bytes = files.iter().map(|f| on_disk(f)).sum();
        found.push(Copy { files, bytes, used });
    }
    found
}

/// Bytes a file takes on disk (a partial copy is sparse).
fn on_disk(file: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).map_or(0, |m| m.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn write(path: &Path, bytes: usize, age_s: u64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![7u8; bytes]).unwrap();
        let file = std::fs::File::options().append(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
    }

    /// A copy of `bytes`, last used `age_s` seconds ago.
    fn copy(cache: &Path, key: &str, bytes: usize, age_s: u64) -> PathBuf {
        let local = cache.join("s3/b").join(key);
        write(&local, bytes, 0);
        write(
            &PathBuf::from(format!("{}.etag", local.display())),
            10,
            age_s,
        );
        local
    }

    #[test]
    fn the_least_recently_used_copies_go_first_and_pinned_or_staged_files_stay() {
        let cache = tempfile::tempdir().unwrap();
        let cache = cache.path();
        let old = copy(cache, "era5/old.nc", 100_000, 300);
        let pinned = copy(cache, "era5/pinned.nc", 100_000, 200);
        let recent = copy(cache, "era5/recent.nc", 100_000, 100);
        let partial = cache.join("s3-steps/b/era5/long.nc");
        write(&partial, 50_000, 0);
        write(
            &PathBuf::from(format!("{}.steps", partial.display())),
            10,
            250,
        );
        // A model being trained into the cache: no stamp beside it.
        let staged = cache.join("s3/b/models/m.safetensors");
        write(&staged, 200_000, 1000);
        // A kept plan, the least recently used, and one being written.
        let plan = cache.join("s3-plans/b/era5/old.nc.plan");
        write(&plan, 20_000, 400);
        let writing = cache.join("s3-plans/b/era5/.plan-x");
        write(&writing, 200_000, 1000);

        let keep = |p: &Path| p == pinned;
        // Everything but the staged files is about 400 kB on disk.
        assert_eq!(prune(cache, 10_000_000, &keep), 0);
        let removed = prune(cache, 250_000, &keep);
        assert!(
            !plan.exists() && !old.exists() && !partial.exists(),
            "the three least recent"
        );
        assert!(!PathBuf::from(format!("{}.etag", old.display())).exists());
        assert!(pinned.exists() && recent.exists() && staged.exists());
        assert!(writing.exists(), "never a plan being written");
        assert!(removed >= 170_000, "{removed}");

        mark_used(&pinned);
        assert!(prune(cache, 0, &|_| false) > 0);
        assert!(
            !pinned.exists() && !recent.exists(),
            "a limit of 0 empties it"
        );
        assert!(staged.exists(), "never a staged file");
    }

    #[test]
    fn limits_read_as_gigabytes() {
        assert_eq!(parse_limit("50").unwrap(), 50_000_000_000);
        assert_eq!(parse_limit(" 0.5 ").unwrap(), 500_000_000);
        for bad in ["", "lots", "-1", "inf"] {
            let e = parse_limit(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "UQCAST_CACHE_MAX_GB={bad}: not a number of gigabytes"
                )),
                "{e}"
            );
        }
    }
}
