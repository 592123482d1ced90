//! NetCDF files that are local copies of S3 objects travel as the objects'
//! URLs, each with the stamp it was planned with: a process on another
//! machine has none of the planner's copies, and fetches its own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use datafusion::error::{DataFusionError, Result};

use uqcast_netcdf::inspect::FileInfo;
use uqcast_netcdf::kept_inspections::KeptInspections;

use super::wait;
use crate::session::s3::{self, ObjectCopy};

/// The objects a spec's files name: URL → stamp (ETag, time, size).
pub type Objects = BTreeMap<String, String>;

/// Joins an object's URL and its stamp in the path of a file a scheduler
/// planned from headers and does not hold (see [`stamped`]). The stamp is
/// the path's last part, so a key holding the mark still splits right.
const STAMP_MARK: &str = "#stamp=";

/// Writes each file that is a copy of an S3 object, or an object planned
/// from headers ([`stamped`]), as the object's URL, and returns the
/// objects' stamps.
pub fn outbound(files: &mut [PathBuf]) -> Objects {
    let mut objects = Objects::new();
    for file in files {
        if let Some(copy) = s3::origin(file) {
            *file = PathBuf::from(&copy.url);
            objects.insert(copy.url, copy.stamp);
        } else if let Some((url, stamp)) = file
            .to_str()
            .filter(|f| f.starts_with("s3://"))
            .and_then(|f| f.rsplit_once(STAMP_MARK))
        {
            objects.insert(url.to_string(), stamp.to_string());
            *file = PathBuf::from(url);
        }
    }
    objects
}

/// Writes each object URL among `files` with the stamp it was planned with:
/// a process that plans from headers (and fetches nothing) names objects so,
/// and [`outbound`] passes the stamps on to the processes that read them.
pub fn stamped(files: &mut [PathBuf], objects: &Objects) {
    for file in files {
        if let Some(stamp) = file.to_str().and_then(|url| objects.get(url)) {
            *file = PathBuf::from(format!("{}{STAMP_MARK}{stamp}", file.display()));
        }
    }
}

/// A model as it travels: a copy of an S3 object goes as the object's URL.
pub fn model_outbound(path: &Path) -> PathBuf {
    s3::origin(path).map_or_else(|| path.to_path_buf(), |copy| PathBuf::from(copy.url))
}

/// The file to load a travelling model from: an object URL is fetched into
/// this process's cache (weights and metadata); whether it holds the planned
/// weights is checked by weights id where it is loaded.
pub fn model_inbound(path: &Path) -> Result<PathBuf> {
    let url = path.to_string_lossy();
    if !url.starts_with("s3://") {
        return Ok(path.to_path_buf());
    }
    wait(s3::model_copy(&url))?.map_err(|e| DataFusionError::Execution(format!("{e:#}")))
}

/// Writes each object URL among `files` as this process's copy of it,
/// fetching copies it lacks; an object changed since planning is refused.
pub fn inbound(files: &mut [PathBuf], objects: &Objects) -> Result<()> {
    for file in files {
        let url = file.to_string_lossy().into_owned();
        if !url.starts_with("s3://") {
            continue;
        }
        let planned = ObjectCopy {
            stamp: planned_stamp(&url, objects)?,
            url: url.clone(),
        };
        let local = wait(s3::copy_of(&planned))?
            .map_err(|e| DataFusionError::Execution(format!("{e:#}")))?;
        *file = local;
    }
    Ok(())
}

/// Describes each of `files` for a scan to be rebuilt over: an object URL
/// from the object (its header where it can be, fetched only when read;
/// refused if changed since planning), a local file by opening it, or from
/// the inspections kept for its folder while the file is unchanged.
pub fn described(files: &[PathBuf], objects: &Objects) -> Result<Vec<FileInfo>> {
    let mut kept = KeptByFolder::default();
    let described = files
        .iter()
        .map(|file| {
            let url = file.to_string_lossy().into_owned();
            if !url.starts_with("s3://") {
                // Found as a table finds it (a missing file says so), then opened.
                return Ok(super::blocking(|| {
                    uqcast_netcdf::catalog::expand(&url)?;
                    kept.inspect(file)
                })?);
            }
            let planned = ObjectCopy {
                stamp: planned_stamp(&url, objects)?,
                url,
            };
            wait(s3::describe_planned(&planned))?
                .map_err(|e| DataFusionError::Execution(format!("{e:#}")))
        })
        .collect::<Result<Vec<_>>>()?;
    super::blocking(|| kept.save());
    Ok(described)
}

/// The kept inspections of the folders a scan's local files are in. A
/// travelling scan names its files, not the table's location, so each
/// folder is kept as a table over that folder keeps it (the same file in
/// the same cache), and what one task inspects the next one finds.
#[derive(Default)]
struct KeptByFolder(HashMap<PathBuf, Option<KeptInspections>>);

impl KeptByFolder {
    fn inspect(&mut self, file: &Path) -> uqcast_netcdf::error::Result<FileInfo> {
        let folder = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let kept = self.0.entry(folder).or_insert_with_key(|folder| {
            let location = folder.to_str()?;
            crate::session::kept_inspections(location).map(|f| KeptInspections::load(&f))
        });
        match kept {
            Some(kept) => kept.inspect(file),
            None => FileInfo::inspect(file),
        }
    }

    fn save(self) {
        for kept in self.0.into_values().flatten() {
            kept.save_adding();
        }
    }
}

/// The stamp a plan names `url` with.
fn planned_stamp(url: &str, objects: &Objects) -> Result<String> {
    objects.get(url).cloned().ok_or_else(|| {
        DataFusionError::Plan(format!(
            "{url}: a serialised plan names it without its stamp"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_files_travel_as_they_are_and_objects_need_their_stamp() {
        let mut files = vec![PathBuf::from("/data/era5/a.nc")];
        assert!(outbound(&mut files).is_empty());
        inbound(&mut files, &Objects::new()).unwrap();
        assert_eq!(files, [PathBuf::from("/data/era5/a.nc")]);

        let mut files = vec![PathBuf::from("s3://bucket/era5/a.nc")];
        let e = inbound(&mut files, &Objects::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("s3://bucket/era5/a.nc: a serialised plan names it without its stamp"),
            "{e}"
        );
    }

    #[test]
    fn objects_planned_from_headers_keep_their_stamps() {
        let objects = Objects::from([
            (
                "s3://b/era5/a.nc".to_string(),
                "\"e1\" 2020-01-01T00:00:00+00:00 9".to_string(),
            ),
            (
                "s3://b/era5/x#stamp=y.nc".to_string(),
                "\"e2\" 2020-01-01T00:00:00+00:00 7".to_string(),
            ),
        ]);
        let mut files: Vec<PathBuf> = objects.keys().map(PathBuf::from).collect();
        files.push(PathBuf::from("/data/local.nc"));
        let planned = files.clone();
        stamped(&mut files, &objects);
        assert_eq!(files[2], planned[2], "local files as they are");
        assert!(
            files[0]
                .to_str()
                .unwrap()
                .ends_with("#stamp=\"e1\" 2020-01-01T00:00:00+00:00 9")
        );
        assert_eq!(outbound(&mut files), objects);
        assert_eq!(files, planned);
    }
}
