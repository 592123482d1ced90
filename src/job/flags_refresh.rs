//! When a run makes the flags table again, and how, a month
//! ([`super::flags_months`]) at a time. A month's flags need making where
//! the run wrote steps in it (new or revised), where its file lacks steps
//! the table holds there (a run killed between its steps and its flags),
//! where they were made by other SQL or settings, and where its file is
//! missing or cannot be read. Each month's file records the SHA-256 of the
//! SQL with its settings filled in and of the month's steps it flags, and
//! its tile counts, so a run that needs none of this reads only the
//! months' footers.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use futures::StreamExt;

use super::flags::{self, Flags};
use super::flags_incremental::Run;
use super::flags_months::{self, LEGACY_FILE, by_month, file_of};
use super::output::Output;
use super::store::Provenance;
use super::{Summary, flags_incremental};
use crate::pipeline::Pipeline;

/// The months' flags footers read at once (S3 requests in flight): a
/// decade's 120 months in two round trips.
const FOOTERS_AT_ONCE: usize = 64;

/// What the flags of a run are made from and written to.
pub struct Flagging<'a> {
    pub pipeline: &'a Pipeline,
    pub output: &'a Output,
    pub query: &'a flags::FlagsQuery,
    pub provenance: &'a Provenance,
}

impl Flagging<'_> {
    /// Makes the flags of a table whose steps (valid times) are now
    /// `steps`, after a run that wrote `written`, where they need making,
    /// and counts the table's tiles into `summary`.
    pub async fn refresh(
        &self,
        steps: &BTreeSet<i64>,
        written: &BTreeSet<i64>,
        summary: &mut Summary,
    ) -> Result<()> {
        let Needs {
            months,
            written_months,
            files,
            query_id,
            kept,
            current,
            needed,
            gone,
        } = self.needs(steps, written).await?;
        let kept_counts = |month: &str| counts(kept.get(month)?);

        let mut made = BTreeMap::new();
        if self.pipeline.flags.per_step && !needed.is_empty() {
            let forecast = self.output.forecast_session("forecast_all").await?;
            let mut legacy = if files.legacy {
                self.legacy_rows(&query_id).await
            } else {
                BTreeMap::new()
            };
            for month in needed.iter().map(String::as_str) {
                let kept_rows = if current.contains(month) {
                    flags_incremental::kept_runs(self.output, &file_of(month))
                        .await
                        .unwrap_or_else(|e| {
                            made_again(&e);
                            Vec::new()
                        })
                } else {
                    legacy.remove(month).unwrap_or_default()
                };
                let none = BTreeSet::new();
                let written = written_months.get(month).unwrap_or(&none);
                let flags = flags_incremental::month(
                    &forecast,
                    self.query,
                    &months[month],
                    written,
                    kept_rows,
                );
                made.insert(month.to_string(), flags.await?);
            }
        } else if !self.pipeline.flags.per_step
            && (!needed.is_empty() || !gone.is_empty() || files.legacy)
        {
            made = self.flag_whole_table(&months).await?;
        }

        let none = BTreeSet::new();
        for (month, flags) in &made {
            self.write(month, flags, months.get(month).unwrap_or(&none))
                .await?;
        }
        for month in &gone {
            self.output.remove_flags(&file_of(month)).await?;
        }
        if files.legacy {
            self.output.remove_flags(LEGACY_FILE).await?;
        }
        // The summary counts the whole table's tiles, the months this run
        // did not write from their files' counts.
        for month in months.keys() {
            let (tiles, flagged) = match made.get(month) {
                Some(flags) => (flags.tiles, flags.flagged),
                None => kept_counts(month).unwrap_or_default(),
            };
            summary.tiles += tiles;
            summary.flagged += flagged;
        }
        Ok(())
    }

    /// The months (of a table whose valid times are `steps`) whose flags
    /// a refresh after a run that wrote `written` would write, and those
    /// whose files it would remove: what `uqcast run --dry-run` says.
    pub async fn months_to_make(
        &self,
        steps: &BTreeSet<i64>,
        written: &BTreeSet<i64>,
    ) -> Result<(usize, usize)> {
        let needs = self.needs(steps, written).await?;
        let whole_table = !needs.needed.is_empty() || !needs.gone.is_empty() || needs.files.legacy;
        let made = match self.pipeline.flags.per_step {
            true => needs.needed.len(),
            false if whole_table => needs.months.len(),
            false => 0,
        };
        Ok((made, needs.gone.len()))
    }

    /// What making the flags of `steps` after `written` needs: the months
    /// whose flags must be made (each month's flags need making where the
    /// run wrote steps in it, or its file is not whole and current), and
    /// the files of months the table no longer has.
    async fn needs(&self, steps: &BTreeSet<i64>, written: &BTreeSet<i64>) -> Result<Needs> {
        let months = by_month(steps)?;
        let written_months = by_month(written)?;
        let files = self.output.flags_files().await?;
        let query_id = flags::query_id(self.query);
        let kept = self.kept_footers(&months, &files).await;
        // Months whose files this SQL and these settings made.
        let current: BTreeSet<String> = kept
            .iter()
            .filter(|(_, p)| p.get(FLAGS_SQL) == Some(&query_id))
            .map(|(month, _)| month.clone())
            .collect();
        let needed = months
            .iter()
            .filter(|(month, steps)| {
                let footer = kept.get(*month);
                let whole = current.contains(*month)
                    && footer.and_then(|p| p.get(FLAGS_STEPS)) == Some(&steps_id(steps))
                    && footer.and_then(counts).is_some();
                written_months.contains_key(*month) || !whole
            })
            .map(|(month, _)| month.clone())
            .collect();
        let gone = files
            .months
            .iter()
            .filter(|m| !months.contains_key(*m))
            .cloned()
            .collect();
        Ok(Needs {
            months,
            written_months,
            files,
            query_id,
            kept,
            current,
            needed,
            gone,
        })
    }

    /// The footers of the months' kept files, where readable (one that is
    /// not is said, and its month made again). Each is its own round trip
    /// on S3, so many are read at a time: a run with nothing new over years
    /// of months waits for a few round trips, not one a month.
    async fn kept_footers(
        &self,
        months: &BTreeMap<String, BTreeSet<i64>>,
        files: &flags_months::Files,
    ) -> BTreeMap<String, Provenance> {
        let footers: Vec<_> =
            futures::stream::iter(months.keys().filter(|m| files.months.contains(*m)))
                .map(|month| async move {
                    let footer = self.output.flags_provenance(&file_of(month)).await;
                    (month.clone(), footer)
                })
                .buffered(FOOTERS_AT_ONCE)
                .collect()
                .await;
        let mut kept = BTreeMap::new();
        for (month, footer) in footers {
            match footer {
                Ok(Some(provenance)) => {
                    kept.insert(month, provenance);
                }
                Ok(None) => {}
                Err(e) => made_again(&e),
            }
        }
        kept
    }

    /// Every month's flags from the SQL over the whole table: a SQL that
    /// may look past a step's own cells, so any change to the table can
    /// change every month's rows. A month the SQL gives no row gets an
    /// empty file.
    async fn flag_whole_table(
        &self,
        months: &BTreeMap<String, BTreeSet<i64>>,
    ) -> Result<BTreeMap<String, Flags>> {
        let (ctx, forecast) = self.output.forecast_session("forecast").await?;
        // Flags read every step, so a step damaged since it was written
        // fails them here: the file is named, not only the flags SQL.
        let flags = flags::compute(&ctx, self.query).await;
        let flags = crate::session::footers::naming_damaged(&[forecast], flags).await?;
        let mut made = flags_incremental::by_month(&flags)?;
        for month in months.keys() {
            if !made.contains_key(month) {
                made.insert(month.clone(), flags_incremental::none()?);
            }
        }
        Ok(made)
    }

    /// Takes the steps `withdrawn` (valid times) out of the kept flags
    /// made by this SQL and settings, before they are forecast again: a
    /// run that then fails leaves no flags of a forecast no longer there,
    /// and the next run flags them (their months' files no longer hold
    /// every step the table does). A month's file that cannot be read is
    /// removed, and its month flagged again by `refresh`. `steps` are the
    /// table's valid times now.
    pub async fn withdraw(&self, steps: &BTreeSet<i64>, withdrawn: &BTreeSet<i64>) -> Result<()> {
        if withdrawn.is_empty() {
            return Ok(());
        }
        let months = by_month(steps)?;
        let files = self.output.flags_files().await?;
        let query_id = flags::query_id(self.query);
        for (month, gone) in by_month(withdrawn)? {
            if !files.months.contains(&month) {
                continue;
            }
            let file = file_of(&month);
            let kept = match self.output.flags_provenance(&file).await {
                Ok(kept) => kept,
                Err(e) => {
                    made_again(&e);
                    self.output.remove_flags(&file).await?;
                    continue;
                }
            };
            if kept.as_ref().and_then(|p| p.get(FLAGS_SQL)) != Some(&query_id) {
                continue;
            }
            let left = match flags_incremental::kept_runs(self.output, &file).await {
                Ok(runs) => flags_incremental::without(runs, &gone)?,
                Err(e) => {
                    made_again(&e);
                    self.output.remove_flags(&file).await?;
                    continue;
                }
            };
            let none = BTreeSet::new();
            let steps_left: BTreeSet<i64> = months
                .get(&month)
                .unwrap_or(&none)
                .difference(&gone)
                .copied()
                .collect();
            self.write(&month, &left, &steps_left).await?;
        }
        Ok(())
    }

    /// The rows of the one-file flags table earlier versions wrote, by
    /// month, where it was made by this SQL and settings (none otherwise,
    /// or where it cannot be read): they serve as the kept rows of months
    /// without a file of their own, so the first run that flags by month
    /// flags only the steps they lack, rather than the table's history.
    async fn legacy_rows(&self, query_id: &str) -> BTreeMap<String, Vec<Run>> {
        let read = async {
            let kept = self.output.flags_provenance(LEGACY_FILE).await?;
            if kept
                .as_ref()
                .and_then(|p| p.get(FLAGS_SQL))
                .map(String::as_str)
                != Some(query_id)
            {
                return Ok(BTreeMap::new());
            }
            let runs = flags_incremental::kept_runs(self.output, LEGACY_FILE).await?;
            flags_incremental::runs_by_month(runs)
        };
        read.await.unwrap_or_else(|e| {
            made_again(&e);
            BTreeMap::new()
        })
    }

    /// Writes `flags` as the flags of `month`'s valid times `steps`, with
    /// the SQL's and the steps' identities and the tile counts in its
    /// footer.
    async fn write(&self, month: &str, flags: &Flags, steps: &BTreeSet<i64>) -> Result<()> {
        let mut provenance = self.provenance.clone();
        provenance.insert(FLAGS_SQL.into(), flags::query_id(self.query));
        provenance.insert(FLAGS_STEPS.into(), steps_id(steps));
        provenance.insert(TILES.into(), flags.tiles.to_string());
        provenance.insert(FLAGGED.into(), flags.flagged.to_string());
        self.output.write_flags(month, flags, &provenance).await?;
        Ok(())
    }
}

/// What [`Flagging::needs`] finds, by month (`YYYYMM`).
struct Needs {
    /// The table's valid times, and those written by the run.
    months: BTreeMap<String, BTreeSet<i64>>,
    written_months: BTreeMap<String, BTreeSet<i64>>,
    files: flags_months::Files,
    query_id: String,
    /// The footers of the months' files that could be read.
    kept: BTreeMap<String, Provenance>,
    /// The months whose files this SQL and these settings made.
    current: BTreeSet<String>,
    needed: Vec<String>,
    /// Months with a file but no step in the table.
    gone: Vec<String>,
}

/// Says that the kept flags could not be read (`e` names the file) and
/// are made again. They come from the forecast table alone, so a flags file
/// cut short or damaged costs one run its month's flags, and does not stop
/// the job until someone removes it.
pub(super) fn made_again(e: &anyhow::Error) {
    eprintln!("warning: {e:#}; the flags are made again from the forecast table");
}

/// The provenance keys of the flags' SQL ([`flags::query_id`]) and of the
/// month's steps they flag ([`steps_id`]).
const FLAGS_SQL: &str = "flags_sql";
const FLAGS_STEPS: &str = "flags_steps";
/// A month's tiles and flagged tiles, for a run that keeps its file.
const TILES: &str = "tiles";
const FLAGGED: &str = "flagged_tiles";

/// A month file's tiles and flagged tiles, from its footer.
fn counts(provenance: &Provenance) -> Option<(usize, usize)> {
    let count = |key: &str| provenance.get(key)?.parse().ok();
    count(TILES).zip(count(FLAGGED))
}

/// The valid times of a month, as one SHA-256 (the flags keep this, not
/// the list).
fn steps_id(steps: &BTreeSet<i64>) -> String {
    let bytes: Vec<u8> = steps.iter().flat_map(|t| t.to_le_bytes()).collect();
    uqcast_hyperdm::checkpoint::sha256_hex(&bytes)
}
