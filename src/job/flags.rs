//! The `flags` table: the pipeline's flagging SQL over `forecast`, checked
//! against `schemas/flags.json` and written atomically, one Parquet file a
//! month ([`super::flags_months`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::store::{Provenance, write_atomically};
use crate::pipeline::{Pipeline, Threshold};

/// The contract, compiled in from `schemas/flags.json`.
pub fn flags_schema() -> Result<SchemaRef> {
    let schema: Schema = serde_json::from_str(include_str!("../../schemas/flags.json"))
        .context("schemas/flags.json is not an Arrow schema")?;
    Ok(Arc::new(schema))
}

/// The flagging SQL with its `{{placeholders}}` filled, and its file (for
/// messages: an edited query that fails is named).
#[derive(Debug)]
pub struct FlagsQuery {
    pub sql: String,
    pub file: PathBuf,
}

/// The placeholders a flags SQL template holds, filled from `[flags]`.
pub const PLACEHOLDERS: [&str; 3] = ["{{tile_degrees}}", "{{eu_threshold}}", "{{min_fraction}}"];

/// The pipeline's flagging SQL with its `{{placeholders}}` filled.
pub fn render(pipeline: &Pipeline) -> Result<FlagsQuery> {
    let path = pipeline.resolve(&pipeline.flags.sql);
    let template = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "pipeline {}: flags.sql {}",
            pipeline.file.display(),
            path.display()
        )
    })?;
    let f = &pipeline.flags;
    let threshold = threshold_sql(&f.eu_threshold)
        .with_context(|| format!("pipeline {}: flags.eu_threshold", pipeline.file.display()))?;
    let sql = template
        .replace("{{tile_degrees}}", &format!("{:?}", f.tile_degrees))
        .replace("{{eu_threshold}}", &threshold)
        .replace("{{min_fraction}}", &format!("{:?}", f.min_fraction));
    if let Some(at) = sql.find("{{") {
        let name: String = sql[at..].chars().take_while(|c| *c != '}').collect();
        bail!(
            "{}: unknown placeholder {name}}}}} (known: tile_degrees, eu_threshold, min_fraction)",
            path.display()
        );
    }
    Ok(FlagsQuery { sql, file: path })
}

/// The SQL expression of a step's EU threshold (`{{eu_threshold}}`): an
/// aggregate over the step's cells where a percentile is given.
pub fn threshold_sql(threshold: &Threshold) -> Result<String> {
    // Exact, so a step's threshold does not depend on how its rows were
    // batched (the t-digest of approx_percentile_cont did, by a few parts
    // in a thousand), whether it is flagged alone or in a table.
    let percentile = threshold
        .percentile
        .map(|q| format!("percentile_cont(t2m_eu, {q:?})"));
    let absolute = threshold.absolute.map(|k| format!("{k:?}"));
    Ok(match (percentile, absolute) {
        (Some(p), Some(a)) => format!("greatest({p}, {a})"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => bail!("neither a percentile nor an absolute threshold"),
    })
}

/// What identifies the flags a query makes: the SHA-256 of its text with
/// the pipeline's settings filled in, kept with the flags table
/// (`uqcast.flags_sql`), so a run can tell flags made by other SQL or
/// settings, which it then makes again for every step.
pub fn query_id(query: &FlagsQuery) -> String {
    uqcast_hyperdm::checkpoint::sha256_hex(query.sql.as_bytes())
}

/// Runs the flagging SQL over an empty `forecast` table of the contract's
/// columns (and its `year`/`month` partitions) and checks the columns it
/// returns: a query that cannot run (a typo, a column that is not there,
/// a missing contract column) stops a run before it samples anything, not
/// after its last step. What only data can show (NULLs) is found by
/// [`compute`].
pub async fn check(query: &FlagsQuery) -> Result<()> {
    let label = format!("flags SQL {}", query.file.display());
    let empty = MemTable::try_new(table_schema(), vec![vec![]])?;
    let ctx = crate::session::new_context();
    ctx.register_table("forecast", Arc::new(empty))?;
    let frame = ctx.sql(&query.sql).await.context(label.clone())?;
    let returned: Vec<String> = frame
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    frame.collect().await.context(label.clone())?;
    same_columns(&returned, &flags_schema()?).context(label)
}

/// The columns the flags SQL sees in table `forecast`: the contract's,
/// then the `year`/`month` Hive partitions with the types
/// `session::register_parquet` gives them.
pub(super) fn table_schema() -> SchemaRef {
    let mut fields: Vec<Field> = uqcast_forecast::forecast_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for name in ["year", "month"] {
        fields.push(Field::new(name, crate::session::partition_type(), false));
    }
    Arc::new(Schema::new(fields))
}

/// The flags table a query produced: its batches in the contract schema
/// (one empty batch when no tile qualifies), tiles and flagged tiles.
#[derive(Debug)]
pub struct Flags {
    pub batches: Vec<RecordBatch>,
    pub tiles: usize,
    pub flagged: usize,
}

/// Runs the flag SQL in `ctx` (which has `forecast` registered).
pub async fn compute(ctx: &SessionContext, query: &FlagsQuery) -> Result<Flags> {
    let label = format!("flags SQL {}", query.file.display());
    let batches = ctx
        .sql(&query.sql)
        .await
        .context(label.clone())?
        .collect()
        .await
        .context(label.clone())?;
    let schema = flags_schema()?;
    let batches = batches
        .iter()
        .map(|b| conform(b, &schema).context(label.clone()))
        .collect::<Result<Vec<_>>>()?;
    let tiles = batches.iter().map(RecordBatch::num_rows).sum();
    let flagged = batches
        .iter()
        .map(|b| {
            b.column_by_name("flagged")
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
                .map_or(0, BooleanArray::true_count)
        })
        .sum();
    let batches = if batches.is_empty() {
        vec![RecordBatch::new_empty(schema)]
    } else {
        batches
    };
    Ok(Flags {
        batches,
        tiles,
        flagged,
    })
}

/// The flags table's folder in the output directory `dir`.
pub fn local_folder(dir: &Path) -> PathBuf {
    dir.join("flags")
}

/// Writes the flags of `month` ([`super::flags_months`]) below
/// [`local_folder`] atomically (a temporary renamed into place); returns
/// its path.
pub fn write_local(
    flags: &Flags,
    dir: &Path,
    month: &str,
    provenance: &Provenance,
) -> Result<PathBuf> {
    let path = local_folder(dir).join(super::flags_months::file_of(month));
    write_atomically(&path, &flags.batches, provenance)
        .with_context(|| format!("{}: writing flags", path.display()))?;
    Ok(path)
}

/// Errors unless a query returned the contract's columns, in its order.
fn same_columns(got: &[String], schema: &SchemaRef) -> Result<()> {
    let want: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if got != want {
        bail!(
            "returns columns [{}]; schemas/flags.json needs [{}]",
            got.join(", "),
            want.join(", ")
        );
    }
    Ok(())
}

/// Puts a result batch into the contract schema (names must match; numeric
/// types are cast; units come from the contract).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let got: Vec<String> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    same_columns(&got, schema)?;
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.null_count() > 0 {
                bail!("column '{}' has NULLs", f.name());
            }
            cast(c, f.data_type()).with_context(|| format!("column '{}'", f.name()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
