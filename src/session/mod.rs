//! Session setup: a DataFusion context with uqcast's tables registered.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::FunctionRegistry as _;
use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use uqcast_forecast::HyperdmForecastFunction;
use uqcast_netcdf::Era5TableProvider;

pub mod codec;
pub mod footers;
pub mod memory;
pub mod object_stores;
pub mod s3;
pub mod step_months;
pub mod utc_time_functions;

/// A session with uqcast's functions registered: the `hyperdm_forecast`
/// table function and the skill scores (`crps_gaussian`, `lat_weight`,
/// `weighted_rmse`, `spread_skill`), and `date_trunc` and `date_part` with
/// a fast path for UTC ([`utc_time_functions`]); its scans fetch the S3
/// objects they read, and name them by URL. Its sorts, aggregations and
/// joins hold at most [`memory::limit_bytes`], spilling to temporary files
/// beyond it.
///
/// Each scan lists only the key prefix its filters name
/// (`year=2020/month=01/`, as [`step_months`] adds for a span of
/// `valid_time`): DataFusion's list cache, left out, would list a table
/// whole on its first scan to serve later prefixes from memory, and holds
/// at most 1 MiB of keys, less than a long forecast table's (ten years of
/// steps: 14,612 keys), so it would list every key for each month asked
/// (on S3 a request per 1,000 keys) and keep none.
pub fn new_context() -> SessionContext {
    let config = datafusion::prelude::SessionConfig::new()
        .with_extension(Arc::new(codec::model_files()))
        .with_extension(Arc::new(s3::file_names()))
        .with_extension(Arc::new(s3::local_copies()));
    let mut runtime = datafusion::execution::runtime_env::RuntimeEnv {
        memory_pool: memory::pool(),
        ..Default::default()
    };
    let caches = CacheManagerConfig::default().with_list_files_cache_limit(0);
    // It cannot fail for these settings; were it to, DataFusion's default
    // caches answer the same, listing more.
    if let Ok(cache_manager) = CacheManager::try_new(&caches) {
        runtime.cache_manager = cache_manager;
    }
    let ctx = SessionContext::new_with_config_rt(config, Arc::new(runtime));
    step_months::enable(&ctx);
    register_functions(&ctx);
    ctx
}

/// Registers uqcast's functions in `ctx` (see [`new_context`]).
pub fn register_functions(ctx: &SessionContext) {
    ctx.register_udtf(
        HyperdmForecastFunction::NAME,
        Arc::new(HyperdmForecastFunction),
    );
    uqcast_skill::sql::register(ctx);
    for udf in utc_time_functions::UtcTimeFunction::udfs() {
        ctx.register_udf(udf);
    }
    let rewrite = Arc::new(utc_time_functions::UseUtcTimeFunctions::default());
    // DataFusion 55 cannot fail to add a rewrite; were it to, `EXTRACT`
    // would take DataFusion's `date_part`: the same answers, slower.
    if let Err(error) = ctx.state_ref().write().register_function_rewrite(rewrite) {
        tracing::warn!("EXTRACT keeps DataFusion's date_part: {error}");
    }
}

/// A session (as [`new_context`]) with one table registered.
pub async fn context_with_table(name: &str, location: String) -> Result<SessionContext> {
    let ctx = new_context();
    register_tables(
        &ctx,
        &[TableArg {
            name: name.into(),
            location,
        }],
    )
    .await?;
    Ok(ctx)
}

/// A numeric column of `batch` as f64 (cast from any numeric type).
pub fn f64_column(
    batch: &datafusion::arrow::array::RecordBatch,
    name: &str,
) -> Result<Vec<Option<f64>>> {
    use datafusion::arrow::array::AsArray;
    let c = batch
        .column_by_name(name)
        .with_context(|| format!("column {name}"))?;
    let c = datafusion::arrow::compute::cast(c, &datafusion::arrow::datatypes::DataType::Float64)?;
    Ok(
        c.as_primitive::<datafusion::arrow::datatypes::Float64Type>()
            .iter()
            .collect(),
    )
}

/// A `--table NAME=PATH` argument.
#[derive(Debug, Clone)]
pub struct TableArg {
    pub name: String,
    pub location: String,
}

impl std::str::FromStr for TableArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, location) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not NAME=PATH"))?;
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || location.is_empty() {
            return Err(format!(
                "'{s}': NAME must be letters, digits or _ and PATH non-empty"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            location: location.to_string(),
        })
    }
}

/// Every file below `dir`, at any depth, sorted.
pub fn files_below(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry.with_context(|| format!("{}", dir.display()))?;
            let path = entry.path();
            // The listing's own type where it gives one (no call per file:
            // a forecast table over ten years has 14,612); a link is
            // followed, as `is_dir` does.
            let is_dir = match entry.file_type() {
                Ok(kind) if !kind.is_symlink() => kind.is_dir(),
                _ => path.is_dir(),
            };
            if is_dir {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a location is Parquet (a `.parquet` file, or a directory holding some).
pub fn is_parquet(location: &str) -> bool {
    let path = Path::new(location);
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    {
        return true;
    }
    path.is_dir() && contains_parquet(path, 4)
}

fn contains_parquet(dir: &Path, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let p = e.path();
        if p.is_dir() {
            depth > 0 && contains_parquet(&p, depth - 1)
        } else {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("parquet"))
        }
    })
}

/// The subfolders holding Parquet of a directory DataFusion would find
/// empty: it reads a directory's own files and `key=value` (Hive partition)
/// folders, and skips other subfolders, such as a run output's `forecast/`
/// and `flags/`. Empty when the directory has files DataFusion reads.
fn parquet_only_in_plain_subfolders(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut plain = Vec::new();
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !path.is_dir() {
            if is_parquet(&path.to_string_lossy()) {
                return Vec::new();
            }
        } else if contains_parquet(&path, 3) {
            if name.contains('=') {
                return Vec::new();
            }
            plain.push(path);
        }
    }
    plain.sort();
    plain
}

/// Registers a Parquet table with its Hive partition columns (`year=…/`
/// folders become a `year` column), which `register_parquet` alone leaves out.
/// Registration reads every file's metadata, and arrow's IPC decoder panics
/// on some damaged schemas: it runs as a task, so that such a panic becomes
/// an error like the parquet crate's own, which the callers trace to its
/// file.
///
/// `listed`: the objects below the table's folder where they were just
/// listed (an `s3://` folder, [`s3::S3Table::Parquet`]), else `None`.
async fn register_parquet(
    ctx: &SessionContext,
    name: &str,
    location: &str,
    listed: Option<Vec<object_store::ObjectMeta>>,
) -> Result<()> {
    let (ctx, name, location) = (ctx.clone(), name.to_string(), location.to_string());
    let registering =
        tokio::spawn(async move { register_parquet_here(&ctx, &name, &location, listed).await });
    match registering.await {
        Ok(registered) => registered,
        Err(e) if e.is_panic() => bail!(
            "Parquet error: its metadata does not decode: {}",
            footers::panic_message(e.into_panic().as_ref())
        ),
        Err(e) => Err(e).context("registering the table"),
    }
}

/// The type of a Hive partition column (`year=2020/` gives `year`): the
/// one DataFusion's own inference gives partition values, for every table
/// uqcast registers with partitions.
pub fn partition_type() -> datafusion::arrow::datatypes::DataType {
    use datafusion::arrow::datatypes::DataType;
    DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8))
}

async fn register_parquet_here(
    ctx: &SessionContext,
    name: &str,
    location: &str,
    listed: Option<Vec<object_store::ObjectMeta>>,
) -> Result<()> {
    let probe = ParquetReadOptions::default()
        .to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
    let url = ListingTableUrl::parse(location)?;
    let steps = step_files(ctx, &url, listed).await?;
    // A table of steps in their month folders is partitioned by those, as
    // its listing just showed: DataFusion's inference would list every
    // file again (0.2 s over ten years of steps on local disk).
    let partitions = match &steps {
        Some(steps) if steps.in_month_folders => vec!["year".to_string(), "month".to_string()],
        _ => probe.infer_partitions(&ctx.state(), &url).await?,
    };
    let partitions = partitions
        .into_iter()
        .map(|c| (c, partition_type()))
        .collect();
    let step_schema = match &steps {
        Some(steps) => forecast_step_schema(ctx, &probe, &url, steps).await?,
        None => None,
    };
    let mut options = ParquetReadOptions::default().table_partition_cols(partitions);
    if let Some(schema) = &step_schema {
        options = options.schema(schema);
    }
    ctx.register_parquet(name, location, options).await?;
    step_months::mark(ctx, &url, steps.is_some_and(|s| s.in_month_folders));
    Ok(())
}

/// The schema of a forecast table `uqcast run` wrote, read from its newest
/// step's file alone (`steps`, the table's); `None` where that file lacks
/// the forecast contract's columns. DataFusion infers a
/// table's schema from every file's footer before the first row, which
/// over years of steps is most of a query's time (4,972 steps: 2.6 s on
/// local disk, 6 s on a loopback S3 server), and most queries read a few
/// months. A run writes every step with the contract's columns, so the
/// newest file speaks for the table; older files missing a column a newer
/// uqcast added read it as null. A forecast table is a folder whose every
/// file is named as a step (`t2m_YYYYMMDDTHHMM.parquet`) and whose newest
/// holds the forecast contract's columns.
async fn forecast_step_schema(
    ctx: &SessionContext,
    probe: &datafusion::datasource::listing::ListingOptions,
    url: &ListingTableUrl,
    steps: &StepFiles,
) -> Result<Option<datafusion::arrow::datatypes::SchemaRef>> {
    let state = ctx.state();
    let store = state.runtime_env().object_store(url)?;
    let newest = steps.newest.clone();
    let schema = probe.format.infer_schema(&state, &store, &[newest]).await?;
    let contract = uqcast_forecast::forecast_schema();
    let holds_contract = contract
        .fields()
        .iter()
        .all(|f| schema.field_with_name(f.name()).is_ok());
    Ok(holds_contract.then_some(schema))
}

/// The files of a table whose every Parquet file is named as a forecast
/// step (`t2m_YYYYMMDDTHHMM.parquet`), as its listing gives them.
struct StepFiles {
    /// Their valid times, sorted.
    times: Vec<i64>,
    /// The newest step's file.
    newest: object_store::ObjectMeta,
    /// Whether each sits in its valid time's `year=YYYY/month=MM/` folder
    /// right below the table's root, as `uqcast run` writes them.
    in_month_folders: bool,
}

/// The [`StepFiles`] of the table at `url`; `None` for a table not of
/// steps. Read from the listing alone, in `ctx` (where an `s3://`
/// location's bucket is registered): `listed`, the objects below `url`'s
/// folder where the caller has just listed them (on S3 a listing is a
/// request per 1,000 keys), else a listing of its own.
async fn step_files(
    ctx: &SessionContext,
    url: &ListingTableUrl,
    listed: Option<Vec<object_store::ObjectMeta>>,
) -> Result<Option<StepFiles>> {
    use futures::TryStreamExt;
    let state = ctx.state();
    let files: Vec<object_store::ObjectMeta> = match listed {
        // The files DataFusion's listing of the table keeps.
        Some(objects) => {
            let ignore = state
                .config_options()
                .execution
                .listing_table_ignore_subdirectory;
            objects
                .into_iter()
                .filter(|o| o.location.as_ref().ends_with(".parquet"))
                .filter(|o| url.contains(&o.location, ignore))
                .collect()
        }
        None => {
            let store = state.runtime_env().object_store(url)?;
            url.list_all_files(&state, store.as_ref(), ".parquet")
                .await?
                .try_collect()
                .await?
        }
    };
    let step_time = |meta: &object_store::ObjectMeta| {
        crate::job::store::valid_time_of(meta.location.filename()?)
    };
    let count = files.len();
    let in_month_folders = files.iter().all(|meta| {
        url.strip_prefix(&meta.location)
            .is_some_and(step_months::in_its_month_folder)
    });
    let (times, newest) = crate::job::store::steps_and_newest(files, step_time);
    Ok(newest
        .filter(|_| times.len() == count)
        .map(|newest| StepFiles {
            times,
            newest,
            in_month_folders,
        }))
}

/// The valid times of the forecast table at `location` registered in
/// `ctx`, from its files' names (no file is opened); `None` where some file
/// is not named as a step.
pub async fn forecast_step_times(ctx: &SessionContext, location: &str) -> Result<Option<Vec<i64>>> {
    let url = ListingTableUrl::parse(location)?;
    Ok(step_files(ctx, &url, None).await?.map(|steps| steps.times))
}

/// Registers an `s3://` table: Parquet read in place, NetCDF from local copies.
async fn register_s3(ctx: &SessionContext, t: &TableArg, remote: &s3::S3Location) -> Result<()> {
    let context = || format!("table '{}'", t.name);
    let prepared = s3::prepare(ctx, remote)
        .await
        .with_context(|| format!("table '{}': {}", t.name, t.location))?;
    match prepared {
        s3::S3Table::Parquet(listed) => {
            // DataFusion lists a location as a folder only with a trailing slash.
            let is_file = remote.key.ends_with(".parquet") || remote.is_glob();
            let location = if is_file || t.location.ends_with('/') {
                t.location.clone()
            } else {
                format!("{}/", t.location)
            };
            if let Err(e) = register_parquet(ctx, &t.name, &location, listed).await {
                // Checking footers costs a request an object, and reading
                // every object again downloads them: only after a failure,
                // and the downloads only for an error a damaged object gives.
                if let Some(footer) = s3::bad_footer(remote).await {
                    let location = &t.location;
                    return Err(footer).with_context(|| format!("table '{}': {location}", t.name));
                }
                let damaged = if footers::from_damaged_parquet(&e) {
                    s3::first_damaged(remote, footers::unreadable).await
                } else {
                    None
                };
                if let Some((url, cause)) = damaged {
                    bail!(
                        "table '{}': {url}: not readable as Parquet: {cause}",
                        t.name
                    );
                }
                return Err(e).with_context(|| format!("table '{}': {}", t.name, t.location));
            }
        }
        s3::S3Table::Netcdf(files) => {
            let provider = Era5TableProvider::from_files(files, None).with_context(context)?;
            ctx.register_table(&t.name, Arc::new(provider))?;
        }
    }
    Ok(())
}

/// Where the inspections of the NetCDF files at `location` (a file, folder
/// or glob) are kept between commands: one file a location, in the cache
/// folder ([`s3::cache_root`]), named by a digest of its absolute form;
/// `None` where there is no cache folder (each command then opens every
/// file's metadata).
pub(crate) fn kept_inspections(location: &str) -> Option<std::path::PathBuf> {
    let root = s3::cache_root().ok()?;
    let absolute = std::path::absolute(location).ok()?;
    let name = uqcast_hyperdm::checkpoint::sha256_hex(absolute.as_os_str().as_encoded_bytes());
    Some(root.join("netcdf").join(format!("{name}.cbor")))
}

/// Registers each table: Parquet locations as Parquet tables (Hive
/// partitions inferred), everything else as ERA5 NetCDF tables.
pub async fn register_tables(ctx: &SessionContext, tables: &[TableArg]) -> Result<()> {
    for (i, t) in tables.iter().enumerate() {
        if let Some(first) = tables[..i].iter().find(|u| u.name == t.name) {
            bail!(
                "--table '{}' is given twice ({} and {}); each table needs its own name",
                t.name,
                first.location,
                t.location
            );
        }
    }
    for t in tables {
        if let Some(remote) =
            s3::S3Location::parse(&t.location).with_context(|| format!("table '{}'", t.name))?
        {
            register_s3(ctx, t, &remote).await?;
            continue;
        }
        if is_parquet(&t.location) {
            if !Path::new(&t.location).exists() {
                bail!(
                    "table '{}': {}: no such file or directory",
                    t.name,
                    t.location
                );
            }
            let unread = parquet_only_in_plain_subfolders(Path::new(&t.location));
            if !unread.is_empty() {
                let names: Vec<String> = unread.iter().map(|p| p.display().to_string()).collect();
                bail!(
                    "table '{}': {}: its Parquet files are in subfolders, which are read only \
                     when named key=value (Hive partitions); name one as the table: {}",
                    t.name,
                    t.location,
                    names.join(", ")
                );
            }
            footers::check(Path::new(&t.location))
                .with_context(|| format!("table '{}'", t.name))?;
            let registered = register_parquet(ctx, &t.name, &t.location, None).await;
            if let Err(e) = registered {
                let location = Path::new(&t.location);
                // A folder's error names no file: find it, off the main
                // thread (see `footers::unreadable`). A file's names itself.
                let unreadable = if location.is_dir() {
                    let location = location.to_path_buf();
                    tokio::task::spawn_blocking(move || footers::first_unreadable(&location))
                        .await
                        .ok()
                        .flatten()
                } else {
                    None
                };
                if let Some((file, cause)) = unreadable {
                    bail!(
                        "table '{}': {}: not readable as Parquet: {cause}",
                        t.name,
                        file.display()
                    );
                }
                return Err(e).with_context(|| format!("table '{}': {}", t.name, t.location));
            }
        } else {
            let location = t.location.clone();
            let kept = kept_inspections(&location);
            let provider = tokio::task::spawn_blocking(move || match kept {
                Some(kept) => Era5TableProvider::try_new_keeping(&[location], None, &kept),
                None => Era5TableProvider::try_new(&[location], None),
            })
            .await
            .context("NetCDF inspection task failed")?
            .with_context(|| format!("table '{}'", t.name))?;
            ctx.register_table(&t.name, Arc::new(provider))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
