//! When a run makes the flags table again, and how. Steps written (new
//! or revised) need flags; so do steps the kept flags lack (a run killed
//! between its steps and its flags), and every step where the kept flags
//! were made by other SQL or settings. The flags file records the SHA-256
//! of the SQL with its settings filled in and of the steps it flags, and
//! its tile counts, so a run that needs none of this reads only its footer.

use std::collections::BTreeSet;

use anyhow::Result;

use super::flags::{self, Flags};
use super::output::Output;
use super::store::Provenance;
use super::{Summary, flags_incremental};
use crate::pipeline::Pipeline;

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
    /// and counts their tiles into `summary`.
    pub async fn refresh(
        &self,
        steps: &BTreeSet<i64>,
        written: &BTreeSet<i64>,
        summary: &mut Summary,
    ) -> Result<()> {
        let flags_provenance = provenance_with_flags(self.provenance, self.query, steps);
        let kept_flags = self.output.flags_provenance().await.unwrap_or_else(|e| {
            made_again(&e);
            None
        });
        let kept_has = |key: &str| {
            kept_flags
                .as_ref()
                .is_some_and(|p| p.get(key) == flags_provenance.get(key))
        };
        let flags_current = kept_has(FLAGS_SQL);
        // The kept table's counts, for the summary of a run that keeps it.
        let count = |key: &str| -> Option<usize> { kept_flags.as_ref()?.get(key)?.parse().ok() };
        let kept_counts = count(TILES).zip(count(FLAGGED));
        let needed = !(written.is_empty()
            && flags_current
            && kept_has(FLAGS_STEPS)
            && kept_counts.is_some());
        let flags = if !needed {
            None
        } else if self.pipeline.flags.per_step {
            let merged =
                flags_incremental::merged(self.output, self.query, steps, written, flags_current);
            Some(merged.await?)
        } else {
            let (ctx, forecast) = self.output.forecast_session("forecast").await?;
            // Flags read every step, so a step damaged since it was written
            // fails them here: the file is named, not only the flags SQL.
            let flags = flags::compute(&ctx, self.query).await;
            Some(crate::session::footers::naming_damaged(&[forecast], flags).await?)
        };
        // The summary counts the flags table's tiles whether or not this
        // run wrote it (the file keeps its counts).
        if let Some(flags) = flags {
            self.write(&flags, steps).await?;
            summary.tiles = flags.tiles;
            summary.flagged = flags.flagged;
        } else if let Some((tiles, flagged)) = kept_counts {
            summary.tiles = tiles;
            summary.flagged = flagged;
        }
        Ok(())
    }

    /// Takes the steps `withdrawn` (valid times) out of a kept flags table
    /// made by this SQL and settings, before they are forecast again: a
    /// run that then fails leaves no flags of a forecast no longer there,
    /// and the next run flags them (the file's steps no longer match the
    /// table's). `steps` are the table's valid times now.
    pub async fn withdraw(&self, steps: &BTreeSet<i64>, withdrawn: &BTreeSet<i64>) -> Result<()> {
        if withdrawn.is_empty() {
            return Ok(());
        }
        let kept = match self.output.flags_provenance().await {
            Ok(Some(kept)) => kept,
            Ok(None) => return Ok(()),
            Err(e) => return self.replace_unreadable(&e).await,
        };
        let current = provenance_with_flags(self.provenance, self.query, steps);
        if kept.get(FLAGS_SQL) != current.get(FLAGS_SQL) {
            return Ok(());
        }
        let flags = match flags_incremental::without(self.output, withdrawn).await {
            Ok(flags) => flags,
            Err(e) => return self.replace_unreadable(&e).await,
        };
        let left: BTreeSet<i64> = steps.difference(withdrawn).copied().collect();
        self.write(&flags, &left).await
    }

    /// Replaces kept flags that cannot be read, damaged or not reached,
    /// with a table that flags no step: none of theirs can then outlive a
    /// forecast being replaced, and `refresh` flags every step.
    async fn replace_unreadable(&self, e: &anyhow::Error) -> Result<()> {
        made_again(e);
        self.write(&flags_incremental::none()?, &BTreeSet::new())
            .await
    }

    /// Writes `flags` as the flags of the valid times `steps`, with the
    /// SQL's and the steps' identities and the tile counts in its footer.
    async fn write(&self, flags: &Flags, steps: &BTreeSet<i64>) -> Result<()> {
        let mut provenance = provenance_with_flags(self.provenance, self.query, steps);
        provenance.insert(TILES.into(), flags.tiles.to_string());
        provenance.insert(FLAGGED.into(), flags.flagged.to_string());
        self.output.write_flags(flags, &provenance).await?;
        Ok(())
    }
}

/// Says that the kept flags could not be read (`e` names the file) and
/// are made again. They come from the forecast table alone, so a flags file
/// cut short or damaged costs one run the whole table's flags, and does not
/// stop the job until someone removes it.
pub(super) fn made_again(e: &anyhow::Error) {
    eprintln!("warning: {e:#}; the flags are made again from the forecast table");
}

/// The provenance keys of the flags' SQL ([`flags::query_id`]) and of the
/// steps they flag ([`steps_id`]).
const FLAGS_SQL: &str = "flags_sql";
const FLAGS_STEPS: &str = "flags_steps";
/// The flags table's tiles and flagged tiles, for a run that keeps it.
const TILES: &str = "tiles";
const FLAGGED: &str = "flagged_tiles";

/// The run's provenance with the flags' SQL and steps identified, for the
/// flags table.
fn provenance_with_flags(
    provenance: &Provenance,
    query: &flags::FlagsQuery,
    steps: &BTreeSet<i64>,
) -> Provenance {
    let mut with = provenance.clone();
    with.insert(FLAGS_SQL.to_string(), flags::query_id(query));
    with.insert(FLAGS_STEPS.to_string(), steps_id(steps));
    with
}

/// The valid times of a table, as one SHA-256 (a table's steps are
/// thousands of times; the flags keep this, not the list).
fn steps_id(steps: &BTreeSet<i64>) -> String {
    let bytes: Vec<u8> = steps.iter().flat_map(|t| t.to_le_bytes()).collect();
    uqcast_hyperdm::checkpoint::sha256_hex(&bytes)
}
