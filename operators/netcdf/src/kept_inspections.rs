//! What inspecting a table's local files found, kept between commands.
//!
//! Every command opens each file's metadata through libnetcdf/HDF5 to
//! build its catalog (about 0.75 ms a NetCDF4 file, one at a time on the
//! libnetcdf thread): 2.8 s for ten years of daily files, before any query
//! runs. A file whose identity is as when it was inspected (size,
//! modification and status-change times to the nanosecond, inode, device)
//! holds what it held then, so its [`FileInfo`] is taken from here instead.
//! Rewriting a file in place changes its status-change time, which no
//! program can set, so a changed file is always inspected again.
//!
//! The kept file is CBOR (a fill value may be NaN, which JSON cannot hold),
//! headed by a format line; one that is unreadable, damaged or of another
//! build is passed over, and written again.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::inspect::{Axis, FileInfo, VariableInfo};

/// The first line of a kept file; another build's is passed over.
const FORMAT: &str = concat!("uqcast netcdf inspections 1 ", env!("CARGO_PKG_VERSION"));

/// Days after which another location's kept inspections are removed.
pub const STALE_DAYS: u64 = 30;

/// A file's identity as the filesystem gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    size: u64,
    modified_ns: i128,
    changed_ns: i128,
    inode: u64,
    device: u64,
}

impl Identity {
    /// `path`'s identity.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Self {
            size: m.len(),
            modified_ns: ns(m.mtime(), m.mtime_nsec()),
            changed_ns: ns(m.ctime(), m.ctime_nsec()),
            inode: m.ino(),
            device: m.dev(),
        })
    }
}

/// Size, modification and status-change times (ns), inode and device.
impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            size,
            modified_ns,
            changed_ns,
            inode,
            device,
        } = self;
        write!(f, "{size} {modified_ns} {changed_ns} {inode} {device}")
    }
}

#[derive(Debug, Clone)]
struct Kept {
    identity: Identity,
    info: FileInfo,
}

/// The kept file's body: each axis once (a table's files share their
/// grid), the files naming theirs by index.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Written {
    axes: Vec<Axis>,
    files: Vec<WrittenFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WrittenFile {
    identity: Identity,
    path: PathBuf,
    time_name: String,
    times: Vec<i64>,
    latitude: usize,
    longitude: usize,
    variables: Vec<VariableInfo>,
    ungridded: Vec<(String, String)>,
}

impl Written {
    /// `kept`, in path order.
    fn of<'a>(kept: impl Iterator<Item = &'a Kept>) -> Self {
        let mut written = Self::default();
        let mut kept: Vec<&Kept> = kept.collect();
        kept.sort_by(|a, b| a.info.path.cmp(&b.info.path));
        for Kept { identity, info } in kept {
            let latitude = written.axis(&info.latitude);
            let longitude = written.axis(&info.longitude);
            written.files.push(WrittenFile {
                identity: *identity,
                path: info.path.clone(),
                time_name: info.time_name.clone(),
                times: info.times.clone(),
                latitude,
                longitude,
                variables: info.variables.clone(),
                ungridded: info.ungridded.clone(),
            });
        }
        written
    }

    fn axis(&mut self, axis: &Axis) -> usize {
        match self.axes.iter().position(|a| a == axis) {
            Some(i) => i,
            None => {
                self.axes.push(axis.clone());
                self.axes.len() - 1
            }
        }
    }

    /// The files kept, or `None` where one names an axis not written.
    fn kept(self) -> Option<Vec<Kept>> {
        let axes = self.axes;
        self.files
            .into_iter()
            .map(|f| {
                Some(Kept {
                    identity: f.identity,
                    info: FileInfo {
                        path: f.path,
                        time_name: f.time_name,
                        times: f.times,
                        latitude: axes.get(f.latitude)?.clone(),
                        longitude: axes.get(f.longitude)?.clone(),
                        variables: f.variables,
                        ungridded: f.ungridded,
                    },
                })
            })
            .collect()
    }
}

/// The inspections kept in one file, and those made since it was read.
#[derive(Debug)]
pub struct KeptInspections {
    file: PathBuf,
    kept: HashMap<PathBuf, Kept>,
    /// Files inspected since the file was read: kept anew, or (changed
    /// while read) dropped. What [`Self::save_adding`] writes over others'.
    inspected: HashSet<PathBuf>,
    /// Whether an inspection was made or a kept one went unused.
    changed: bool,
}

impl KeptInspections {
    /// The inspections kept in `file`; none where it is missing or cannot
    /// be read as this build wrote it.
    pub fn load(file: &Path) -> Self {
        let kept = std::fs::read(file)
            .ok()
            .and_then(|bytes| {
                let body = bytes.strip_prefix(FORMAT.as_bytes())?.strip_prefix(b"\n")?;
                ciborium::from_reader::<Written, _>(body).ok()?.kept()
            })
            .unwrap_or_default();
        Self {
            file: file.to_path_buf(),
            kept: kept.into_iter().map(|k| (k.info.path.clone(), k)).collect(),
            inspected: HashSet::new(),
            changed: false,
        }
    }

    /// `path`'s inspection: the kept one where its identity is unchanged,
    /// else a fresh one (kept if the file is unchanged by it).
    pub fn inspect(&mut self, path: &Path) -> Result<FileInfo> {
        // Where it cannot be read, the inspection says why.
        let before = Identity::of(path).ok();
        if let (Some(identity), Some(kept)) = (before, self.kept.get(path))
            && kept.identity == identity
        {
            return Ok(kept.info.clone());
        }
        self.changed = true;
        self.inspected.insert(path.to_path_buf());
        let info = FileInfo::inspect(path)?;
        match before.filter(|&b| Identity::of(path).ok() == Some(b)) {
            Some(identity) => {
                let kept = Kept {
                    identity,
                    info: info.clone(),
                };
                self.kept.insert(path.to_path_buf(), kept);
            }
            // Changed while it was read: not kept.
            None => {
                self.kept.remove(path);
            }
        }
        Ok(info)
    }

    /// Writes the inspections of `paths` (the table's files; others are
    /// dropped) where anything changed, to a temporary beside the file and
    /// renamed over it, so a reader sees the old or the new whole. A
    /// failure only costs the next command the inspections. What another
    /// process added to the file since it was loaded (an executor on this
    /// machine reading the same folder) is kept while its file exists.
    pub fn save(self, paths: &[PathBuf]) {
        let paths: HashSet<&PathBuf> = paths.iter().collect();
        let known: HashSet<PathBuf> = self.kept.keys().cloned().collect();
        self.save_merging(|path| paths.contains(path) || (!known.contains(path) && path.exists()));
    }

    /// Writes the inspections where anything changed, as [`Self::save`],
    /// keeping those of files not inspected this time while they exist: for
    /// a reader of a few of a folder's files at a time (a cluster's executor,
    /// whose other tasks read the rest).
    pub fn save_adding(self) {
        self.save_merging(|path| path.exists());
    }

    /// Writes the inspections that `keep` keeps where anything changed.
    /// Savers at once (an executor's tasks, a command beside them): each,
    /// holding a lock on the cache folder, reads the file again and adds
    /// what others wrote since it was loaded, its own fresh inspections
    /// winning, so no saver's additions are lost.
    fn save_merging(mut self, keep: impl Fn(&PathBuf) -> bool) {
        if !self.changed && self.kept.keys().all(&keep) {
            // Nothing inspected or dropped: what was loaded is on disk already.
            return;
        }
        let folder = self.file.parent().unwrap_or(Path::new("."));
        let locked = std::fs::create_dir_all(folder)
            .and_then(|()| std::fs::File::open(folder))
            .and_then(|f| f.lock().map(|()| f));
        if let Err(e) = &locked {
            // Unlocked, another saver's additions may be lost: a cost, not an error.
            tracing::debug!("kept inspections {}: lock: {e}", self.file.display());
        }
        let on_disk = Self::load(&self.file).kept;
        for (path, kept) in on_disk {
            if !self.inspected.contains(&path) {
                self.kept.insert(path, kept);
            }
        }
        self.save_retaining(keep);
        drop(locked);
    }

    fn save_retaining(mut self, keep: impl Fn(&PathBuf) -> bool) {
        let before = self.kept.len();
        self.kept.retain(|path, _| keep(path));
        if !self.changed && self.kept.len() == before {
            return;
        }
        if let Err(e) = self.write() {
            tracing::debug!("kept inspections {}: {e}", self.file.display());
        }
        self.forget_stale();
    }

    /// Removes the kept inspections beside this one that no command has
    /// written for [`STALE_DAYS`]: those of locations no longer read (a
    /// location read but unchanged loses its own, and inspects once again).
    fn forget_stale(&self) {
        let Some(folder) = self.file.parent() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(folder) else {
            return;
        };
        let stale = std::time::Duration::from_secs(STALE_DAYS * 86_400);
        for entry in entries.flatten() {
            let path = entry.path();
            let age = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok()?.elapsed().ok());
            if path.extension().is_some_and(|e| e == "cbor") && age.is_some_and(|a| a > stale) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn write(&self) -> std::io::Result<()> {
        let folder = self.file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(folder)?;
        let mut temporary = tempfile::Builder::new()
            .prefix(".inspections-")
            .tempfile_in(folder)?;
        writeln!(temporary, "{FORMAT}")?;
        let written = Written::of(self.kept.values());
        let mut writer = std::io::BufWriter::new(&mut temporary);
        ciborium::into_writer(&written, &mut writer).map_err(std::io::Error::other)?;
        writer.flush()?;
        drop(writer);
        temporary.persist(&self.file).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::writer::{Encoding, Grid, GridVariable, write_era5};

    const HOUR: i64 = 3_600_000_000;

    /// Two steps from `first` (hours) on a 2 × 3 grid.
    fn write_steps(path: &Path, first: i64) {
        let grid = Grid {
            latitude: vec![45.0, 44.0],
            longitude: vec![260.0, 261.0, 262.0],
            times: vec![first * HOUR, (first + 6) * HOUR],
            era5t_from: None,
        };
        let values = (0..12).map(|i| 270.0 + i as f32).collect();
        let t2m = GridVariable::new("t2m", "K", "2 metre temperature", values);
        write_era5(path, Encoding::Nc4, grid, vec![t2m]).unwrap();
    }

    fn times(catalog: &Catalog) -> Vec<i64> {
        catalog.steps.iter().map(|s| s.time / HOUR).collect()
    }

    #[test]
    fn an_unchanged_file_is_taken_from_the_kept_inspections_and_a_changed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let (a, b) = (data.join("a.nc"), data.join("b.nc"));
        write_steps(&a, 0);
        write_steps(&b, 12);
        let kept = dir.path().join("kept/inspections.cbor");
        let location = [data.display().to_string()];
        let open = || Catalog::open_keeping(&location, None, &kept).unwrap();
        let fresh = Catalog::open(&location, None).unwrap();
        assert_eq!(times(&open()), [0, 6, 12, 18]);
        let first = std::fs::read(&kept).unwrap();
        assert!(first.starts_with(FORMAT.as_bytes()));
        // Read back, the kept catalog is the fresh one.
        let again = open();
        // Compared as printed: an unused fill value is NaN, unequal to itself.
        let files = |c: &Catalog| format!("{:?}", c.files);
        assert_eq!(files(&again), files(&fresh));
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            first,
            "nothing new, not written"
        );

        // What is kept is what the next command uses: a kept entry made to
        // say other times shows in the catalog while its file is unchanged…
        let mut inspections = KeptInspections::load(&kept);
        let entry = inspections.kept.get_mut(&a).unwrap();
        entry.info.times = vec![100 * HOUR, 106 * HOUR];
        inspections.changed = true;
        inspections.inspected.insert(a.clone());
        inspections.save(&[a.clone(), b.clone()]);
        assert_eq!(times(&open()), [12, 18, 100, 106]);
        // …and once the file is rewritten in place, with the same bytes and
        // its modification time put back, it is inspected again: its
        // status-change time moved.
        let (bytes, modified) = (std::fs::read(&a).unwrap(), a.metadata().unwrap().modified());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&a, bytes).unwrap();
        let file = std::fs::File::options().write(true).open(&a).unwrap();
        file.set_modified(modified.unwrap()).unwrap();
        assert_eq!(times(&open()), [0, 6, 12, 18]);
        // A file gone is dropped from the kept ones.
        std::fs::remove_file(&b).unwrap();
        assert_eq!(times(&open()), [0, 6]);
        assert_eq!(KeptInspections::load(&kept).kept.len(), 1);
    }

    /// Tasks that each read some of a folder's files add to its kept
    /// inspections; a file gone is dropped.
    #[test]
    fn saving_what_one_task_inspected_keeps_the_other_tasks_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.nc"), dir.path().join("b.nc"));
        write_steps(&a, 0);
        write_steps(&b, 12);
        let kept = dir.path().join("kept.cbor");
        let task = |file: &Path| {
            let mut inspections = KeptInspections::load(&kept);
            let info = inspections.inspect(file).unwrap();
            inspections.save_adding();
            info
        };
        task(&a);
        task(&b);
        let both = KeptInspections::load(&kept);
        let mut paths: Vec<_> = both.kept.keys().cloned().collect();
        paths.sort();
        assert_eq!(paths, [a.clone(), b.clone()]);
        // Unchanged, a file is taken from what was kept: doctored, it shows.
        let mut doctored = both;
        doctored.kept.get_mut(&a).unwrap().info.times = vec![100 * HOUR];
        doctored.changed = true;
        doctored.inspected.insert(a.clone());
        doctored.save(&[a.clone(), b.clone()]);
        assert_eq!(task(&a).times, [100 * HOUR]);
        std::fs::remove_file(&b).unwrap();
        task(&a);
        assert_eq!(KeptInspections::load(&kept).kept.len(), 1, "b is gone");
    }

    /// Two tasks load the kept file before either saves (an executor runs
    /// tasks side by side): the second to save adds to the first's.
    #[test]
    fn tasks_saving_at_once_keep_each_others_inspections() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("{i}.nc"))).collect();
        for (i, file) in files.iter().enumerate() {
            write_steps(file, 12 * i as i64);
        }
        let kept = dir.path().join("cache").join("kept.cbor");
        let mut first = KeptInspections::load(&kept);
        first.inspect(&files[0]).unwrap();
        first.save_adding();
        let (mut second, mut third) = (KeptInspections::load(&kept), KeptInspections::load(&kept));
        second.inspect(&files[1]).unwrap();
        third.inspect(&files[2]).unwrap();
        // Side by side on threads: the folder's lock orders their saves.
        let mut fourth = KeptInspections::load(&kept);
        fourth.inspect(&files[3]).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| second.save_adding());
            s.spawn(|| fourth.save_adding());
        });
        // While another holds the folder's lock, a save waits for it.
        let folder = std::fs::File::open(kept.parent().unwrap()).unwrap();
        folder.lock().unwrap();
        std::thread::scope(|s| {
            let saving = s.spawn(|| third.save_adding());
            std::thread::sleep(std::time::Duration::from_millis(300));
            let waiting = KeptInspections::load(&kept);
            assert!(!waiting.kept.contains_key(&files[2]), "saved under a lock");
            folder.unlock().unwrap();
            saving.join().unwrap();
        });
        let mut paths: Vec<_> = KeptInspections::load(&kept).kept.into_keys().collect();
        paths.sort();
        assert_eq!(paths, files);
    }

    /// A command saving a folder's inspections while an executor on this
    /// machine adds to them keeps the executor's additions, and drops the
    /// files it knew and no longer lists.
    #[test]
    fn a_command_saving_beside_an_executor_keeps_what_the_executor_added() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("{i}.nc"))).collect();
        for (i, file) in files.iter().enumerate() {
            write_steps(file, 12 * i as i64);
        }
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| files[i].clone());
        let kept = dir.path().join("cache").join("kept.cbor");
        let mut first = KeptInspections::load(&kept);
        first.inspect(&a).unwrap();
        first.inspect(&b).unwrap();
        first.save(&[a.clone(), b.clone()]);
        // A command loads what the first kept; an executor then adds `c`.
        let mut command = KeptInspections::load(&kept);
        command.inspect(&a).unwrap();
        command.inspect(&d).unwrap();
        let mut executor = KeptInspections::load(&kept);
        executor.inspect(&c).unwrap();
        executor.save_adding();
        // The command's table is now `a` and `d` (`b` left it).
        command.save(&[a.clone(), d.clone()]);
        let mut paths: Vec<_> = KeptInspections::load(&kept).kept.into_keys().collect();
        paths.sort();
        assert_eq!(paths, [a, c, d]);
    }

    #[test]
    fn damaged_kept_inspections_are_passed_over_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.nc");
        write_steps(&a, 0);
        let kept = dir.path().join("inspections.cbor");
        let location = [a.display().to_string()];
        for damage in [
            b"not cbor at all".to_vec(),
            format!("{FORMAT}\n\x01\x02").into_bytes(),
            b"uqcast netcdf inspections 0 0.0.0\n".to_vec(),
        ] {
            std::fs::write(&kept, &damage).unwrap();
            let catalog = Catalog::open_keeping(&location, None, &kept).unwrap();
            assert_eq!(times(&catalog), [0, 6]);
            assert_eq!(KeptInspections::load(&kept).kept.len(), 1, "written again");
        }
        // A file that cannot be inspected fails as without kept inspections,
        // naming it, and the kept ones stay as they were.
        let before = std::fs::read(&kept).unwrap();
        let bad = dir.path().join("bad.nc");
        std::fs::write(&bad, b"CDF\x01 truncated").unwrap();
        let both = [dir.path().display().to_string()];
        let err = Catalog::open_keeping(&both, None, &kept).unwrap_err();
        assert!(err.to_string().contains("bad.nc"), "{err}");
        assert_eq!(std::fs::read(&kept).unwrap(), before);
    }

    #[test]
    fn another_locations_inspections_unwritten_for_a_month_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.nc");
        write_steps(&a, 0);
        let folder = dir.path().join("kept");
        std::fs::create_dir(&folder).unwrap();
        let age = |days: u64| {
            std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400)
        };
        for (name, days) in [
            ("old.cbor", STALE_DAYS + 1),
            ("recent.cbor", STALE_DAYS - 1),
        ] {
            let path = folder.join(name);
            std::fs::write(&path, b"x").unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(age(days)).unwrap();
        }
        std::fs::write(folder.join("notes.txt"), b"not ours").unwrap();
        let location = [a.display().to_string()];
        Catalog::open_keeping(&location, None, &folder.join("this.cbor")).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "recent.cbor", "this.cbor"]);
    }
}
