//! What the last recheck vouched for, so that a run whose input files and
//! forecast files are as it left them need not read its window again, and
//! one where some input files changed reads only their steps.
//!
//! The recheck ([`super::revisions`]) reads the input of every forecast
//! step within its window and compares it with the copy each forecast file
//! holds: most of a run with nothing new. After a run that rechecked, the
//! output keeps a ledger (`.uqcast-recheck.json`, beside `forecast/`): the
//! source's location and query, each input file's identity (local: size,
//! modification and change times, inode; S3: size, ETag, last-modified),
//! a digest of the identities of the forecast files from the oldest step it
//! vouches for on, and that step. Where the source, the query and the
//! forecast files are unchanged and the window starts no earlier, the next
//! run reads nothing if no input file changed, and else, for a step-local
//! query ([`super::step_local`]) over NetCDF, only the steps the new and
//! changed files hold: every other step's input is in a file that holds
//! the bytes the ledger's run saw.
//!
//! Identities are taken before the input is opened, so a file changed while
//! a run reads it has another identity at the next run, which reads again.
//! The change time cannot be set by tools that keep a file's modification
//! time (`cp -p`, `rsync -t`), so a file rewritten in place is seen too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use uqcast_hyperdm::checkpoint::sha256_hex;
use uqcast_netcdf::kept_inspections::Identity;

use super::output::Output;
use super::source_steps;
use crate::session::s3::S3Location;

/// The ledger's name in the output folder (or prefix).
pub const NAME: &str = ".uqcast-recheck.json";

/// Raised whenever what a ledger records changes meaning.
const FORMAT: u32 = 1;

/// The input files a location names, each with its identity.
pub type Inputs = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    format: u32,
    source: String,
    query_sha256: String,
    /// Every forecast step from this initial time (UTC µs) on holds the
    /// input the files below give.
    verified_from: i64,
    /// Of the forecast files valid from `verified_from` + lead on.
    forecast_sha256: String,
    inputs: Inputs,
}

/// What changes when a local file is written again: its size, modification
/// and change times (ns), inode and device (the identity a NetCDF table's
/// kept inspections are judged by).
pub fn file_stamp(path: &Path) -> Result<String> {
    let identity = Identity::of(path).with_context(|| path.display().to_string())?;
    Ok(identity.to_string())
}

/// The files the source `location` names, as its table reads them, with
/// their identities; `None` where they cannot be listed (the table's
/// registration then says why) or the location is not one uqcast lists.
pub async fn inputs(location: &str) -> Option<Inputs> {
    match S3Location::parse(location) {
        Ok(Some(remote)) => {
            let objects = crate::session::s3::named_objects(&remote).await.ok()?;
            let stamp = crate::session::s3::object_stamp;
            Some(
                objects
                    .iter()
                    .map(|o| (remote.url(o.location.as_ref()), stamp(o)))
                    .collect(),
            )
        }
        Ok(None) => {
            let location = location.to_string();
            tokio::task::spawn_blocking(move || local_inputs(&location).ok())
                .await
                .ok()
                .flatten()
        }
        Err(_) => None,
    }
}

fn local_inputs(location: &str) -> Result<Inputs> {
    let path = Path::new(location);
    let files = if !crate::session::is_parquet(location) {
        uqcast_netcdf::catalog::expand(location)?
    } else if path.is_dir() {
        // Every file below: more than the Parquet reader reads, so a change
        // it would not see costs a read, never a missed revision.
        crate::session::files_below(path)?
    } else if location.contains(['*', '?', '[']) {
        glob::glob(location)?.collect::<std::result::Result<Vec<_>, _>>()?
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|f| Ok((f.display().to_string(), file_stamp(f)?)))
        .collect()
}

/// The digest of the forecast files valid from `from` on.
async fn forecast_digest(output: &Output, from: i64) -> Result<String> {
    let mut files = output.forecast_identities(from).await?;
    files.sort();
    let listed: String = files
        .iter()
        .map(|(name, stamp)| format!("{name}\t{stamp}\n"))
        .collect();
    Ok(sha256_hex(listed.as_bytes()))
}

/// What a run knows of its recheck: the source and the input files'
/// identities taken before it opened them, the ledger it found, and from
/// which initial time on that ledger vouches for the steps it did not read.
pub struct Recheck {
    source: String,
    query_sha256: String,
    inputs: Option<Inputs>,
    found: Option<Ledger>,
    vouched_from: Option<i64>,
}

impl Recheck {
    /// Takes the identities of the files `location` names, before the run
    /// opens them; `query` is the source query (without `--since`/`--until`).
    pub async fn start(location: &str, query: &str, days: u32) -> Self {
        Self {
            source: location.to_string(),
            query_sha256: sha256_hex(query.as_bytes()),
            inputs: if days > 0 {
                inputs(location).await
            } else {
                None
            },
            found: None,
            vouched_from: None,
        }
    }

    /// The steps of `window` (initial times) whose input must be read
    /// again: none where the ledger vouches for them all; where files
    /// changed, the steps those files hold (by the table `era5` of `ctx`)
    /// if the source query is `step_local`, else the whole window. Says
    /// which it is when a ledger was found.
    pub async fn steps_to_read(
        &mut self,
        ctx: &SessionContext,
        step_local: bool,
        output: &Output,
        window: &BTreeSet<i64>,
        lead: i64,
    ) -> BTreeSet<i64> {
        let (Some(inputs), Some(&oldest)) = (&self.inputs, window.first()) else {
            return window.clone();
        };
        self.found = load(output).await;
        let Some(ledger) = &self.found else {
            return window.clone();
        };
        if ledger.format != FORMAT
            || ledger.source != self.source
            || ledger.query_sha256 != self.query_sha256
            || oldest < ledger.verified_from
        {
            return window.clone();
        }
        match forecast_digest(output, ledger.verified_from + lead).await {
            Ok(digest) if digest == ledger.forecast_sha256 => {}
            _ => {
                eprintln!(
                    "recheck: forecast files changed since the last recheck (by a run \
                     without a recheck, one that failed, or by hand): reading the input of {} \
                     steps again",
                    window.len()
                );
                return window.clone();
            }
        }
        let changed = changed(&ledger.inputs, inputs);
        let Some(first) = changed.first() else {
            eprintln!(
                "recheck: the {} input files and the forecast files are as the last \
                 recheck left them; the input of {} steps is not read again",
                inputs.len(),
                window.len()
            );
            self.vouched_from = Some(ledger.verified_from);
            return BTreeSet::new();
        };
        let files = format!(
            "{} of {} input files new, changed or gone since the last recheck ({first}{})",
            changed.len(),
            inputs.len(),
            if changed.len() > 1 { ", …" } else { "" },
        );
        // A file gone leaves its steps' forecasts as they are; a step it
        // held that another file holds now is that file's.
        let held: Vec<&String> = changed.iter().filter(|n| inputs.contains_key(*n)).collect();
        let steps = if step_local {
            source_steps::held_by(ctx, &held).await
        } else {
            None
        };
        let Some(steps) = steps else {
            eprintln!(
                "recheck: {files}, and the source query is not step-local: reading the \
                 input of {} steps again",
                window.len()
            );
            return window.clone();
        };
        let read: BTreeSet<i64> = window.intersection(&steps).copied().collect();
        if read.is_empty() {
            eprintln!(
                "recheck: {files}: they hold none of the {} steps in the window, whose input \
                 is not read again",
                window.len()
            );
        } else {
            eprintln!(
                "recheck: {files}: reading the input of the {} of {} steps they hold",
                read.len(),
                window.len()
            );
        }
        self.vouched_from = Some(oldest);
        read
    }

    /// After a run that ended well: records what the output's forecast
    /// steps now vouch for. `forecast` are the initial times forecast
    /// before the run, `read` those whose input it read again, `written`
    /// those it forecast. Not recorded for a run limited by `--since` or
    /// `--until` (its recheck reads only within them). A ledger that
    /// cannot be written is a warning: the next run reads its window again.
    pub async fn finish(
        &self,
        output: &Output,
        (forecast, read, written): (&BTreeSet<i64>, &BTreeSet<i64>, &BTreeSet<i64>),
        lead: i64,
        limited: bool,
    ) {
        let Some(inputs) = &self.inputs else { return };
        if limited {
            return;
        }
        // Steps the found ledger vouched for stay vouched for where this run
        // did not read their input: their files are unchanged.
        let Some(verified_from) = verified_from(forecast, read, written, self.vouched_from) else {
            return;
        };
        let where_ = output.note_location(NAME);
        let recorded = async {
            let ledger = Ledger {
                format: FORMAT,
                source: self.source.clone(),
                query_sha256: self.query_sha256.clone(),
                verified_from,
                forecast_sha256: forecast_digest(output, verified_from + lead).await?,
                inputs: inputs.clone(),
            };
            if self.found.as_ref() != Some(&ledger) {
                output
                    .write_note(NAME, serde_json::to_vec_pretty(&ledger)?)
                    .await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = recorded.await {
            eprintln!(
                "warning: {where_}: the recheck's ledger was not written ({e:#}); the next run \
                 reads its recheck window again"
            );
        }
    }
}

/// The oldest initial time from which on every forecast step (`forecast`
/// before the run, and `written` by it) holds its input as it is now: its
/// input was `read` again, or it was `written`, or it is at or after
/// `skipped_from`, where a ledger vouched for the steps whose input the run
/// did not read. `None` where the newest step is none of these.
fn verified_from(
    forecast: &BTreeSet<i64>,
    read: &BTreeSet<i64>,
    written: &BTreeSet<i64>,
    skipped_from: Option<i64>,
) -> Option<i64> {
    let vouched =
        |t: i64| read.contains(&t) || written.contains(&t) || skipped_from.is_some_and(|f| t >= f);
    let all: BTreeSet<i64> = forecast.union(written).copied().collect();
    all.iter()
        .rev()
        .take_while(|&&t| vouched(t))
        .last()
        .copied()
}

/// The ledger an earlier run left, if it reads; one that does not (damaged
/// by hand, or cut short) is said and read around: the window is read.
async fn load(output: &Output) -> Option<Ledger> {
    let bytes = match output.read_note(NAME).await {
        Ok(bytes) => bytes?,
        Err(e) => {
            eprintln!("warning: the recheck's ledger is not readable ({e:#}); reading its window");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(ledger) => Some(ledger),
        Err(e) => {
            eprintln!(
                "warning: {}: not a recheck ledger ({e}); reading the recheck window again",
                output.note_location(NAME)
            );
            None
        }
    }
}

/// The files whose identity differs between `before` and `now`, or that
/// only one of them has, by name.
fn changed(before: &Inputs, now: &Inputs) -> Vec<String> {
    let names: BTreeSet<&String> = before.keys().chain(now.keys()).collect();
    names
        .into_iter()
        .filter(|n| before.get(*n) != now.get(*n))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(times: &[i64]) -> BTreeSet<i64> {
        times.iter().copied().collect()
    }

    #[test]
    fn the_ledger_vouches_from_the_oldest_step_of_an_unbroken_run_up_to_the_newest() {
        let forecast = set(&[1, 2, 3, 4, 5]);
        // A first run: every step written.
        assert_eq!(
            verified_from(&set(&[]), &set(&[]), &forecast, None),
            Some(1)
        );
        // A window of the newest three read, one new step written.
        let read = set(&[3, 4, 5]);
        assert_eq!(verified_from(&forecast, &read, &set(&[6]), None), Some(3));
        // An older step forecast now (a backfill) does not bridge the gap
        // of steps whose input was not read.
        assert_eq!(verified_from(&forecast, &read, &set(&[0]), None), Some(3));
        // A skipped recheck keeps what the ledger vouched for, and adds
        // the steps written under it.
        assert_eq!(
            verified_from(&forecast, &set(&[]), &set(&[6]), Some(2)),
            Some(2)
        );
        // The newest step neither read nor written: nothing to vouch for.
        assert_eq!(
            verified_from(&forecast, &set(&[3, 4]), &set(&[]), None),
            None
        );
        assert_eq!(verified_from(&set(&[]), &set(&[]), &set(&[]), None), None);
    }

    #[test]
    fn a_changed_file_is_one_whose_identity_differs_or_that_one_side_lacks() {
        let before: Inputs = [("a", "1"), ("b", "2"), ("c", "3")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let now: Inputs = [("a", "1"), ("b", "9"), ("d", "4")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        assert_eq!(changed(&before, &now), ["b", "c", "d"]);
        assert!(changed(&now, &now).is_empty());
    }

    #[test]
    fn a_file_rewritten_with_its_size_and_modification_time_kept_has_another_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.nc");
        std::fs::write(&path, b"ERA5T").unwrap();
        let before = file_stamp(&path).unwrap();
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        // `rsync -t --inplace`: same inode, same size, the time put back.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &file, b"ERA5 ").unwrap();
        file.set_modified(modified).unwrap();
        drop(file);
        let after = file_stamp(&path).unwrap();
        let fields = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        let (b, a) = (fields(&before), fields(&after));
        // Size, modification time and inode kept; the change time is not.
        assert_eq!((&b[0], &b[1], &b[3]), (&a[0], &a[1], &a[3]));
        assert_ne!(b[2], a[2]);
    }

    #[test]
    fn a_netcdf_folder_is_listed_as_its_table_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.nc"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/b.nc"), b"x").unwrap();
        let listed = local_inputs(&dir.path().display().to_string()).unwrap();
        let names: Vec<&str> = listed
            .keys()
            .map(|k| k.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["a.nc"]);
    }
}
