//! Plans through bytes and back: what a distributed executor rebuilds must
//! run as the planned plan does, and must refuse files or models that
//! changed since planning.

use std::path::{Path, PathBuf};

use candle_core::Device;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::{collect, displayable};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::{
    logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::logical_plan::DefaultLogicalExtensionCodec;
use datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec;
use uqcast_forecast::features::{Normalisation, Patch};
use uqcast_forecast::{FieldTraining, ModelGrid, StepField};
use uqcast_hyperdm::optim::AdamWConfig;
use uqcast_hyperdm::{DiffusionConfig, HyperConfig, Method, MlpConfig, TrainConfig};
use uqcast_netcdf::{Encoding, Grid, GridVariable, write_era5};

use super::*;
use crate::session::{TableArg, new_context, register_tables};

const LAT: [f64; 3] = [30.0, 29.0, 28.0];
const LON: [f64; 4] = [250.0, 251.0, 252.0, 253.0];
const HOUR: i64 = 3_600_000_000;
/// 2021-01-01T00:00Z in microseconds.
const START: i64 = 1_609_459_200_000_000;

fn t2m(step: i64, cell: usize) -> f32 {
    270.0 + cell as f32 * 0.7 + step as f32 * 0.5 + ((step as usize * 7 + cell) % 5) as f32
}

/// Four 6-hourly steps from `first` (a step index), one NetCDF4 file.
fn write_steps(path: &Path, first: i64) {
    let times: Vec<i64> = (first..first + 4).map(|k| START + k * 6 * HOUR).collect();
    let values = (first..first + 4)
        .flat_map(|k| (0..12).map(move |c| t2m(k, c)))
        .collect();
    write_era5(
        path,
        Encoding::Nc4,
        Grid {
            latitude: LAT.to_vec(),
            longitude: LON.to_vec(),
            times,
            era5t_from: None,
        },
        vec![GridVariable::new("t2m", "K", "2 metre temperature", values)],
    )
    .unwrap();
}

/// Two files of four steps each, registered as `era5` in a uqcast session
/// with two partitions (so plans have repartitioning and merges to carry).
async fn era5(dir: &Path) -> SessionContext {
    era5_with(dir, datafusion::prelude::SessionConfig::new()).await
}

async fn era5_with(dir: &Path, config: datafusion::prelude::SessionConfig) -> SessionContext {
    write_steps(&dir.join("a.nc"), 0);
    write_steps(&dir.join("b.nc"), 4);
    let ctx = SessionContext::new_with_config(config.with_target_partitions(2));
    crate::session::register_functions(&ctx);
    register_tables(
        &ctx,
        &[TableArg {
            name: "era5".into(),
            location: dir.to_string_lossy().into_owned(),
        }],
    )
    .await
    .unwrap();
    ctx
}

fn physical() -> PhysicalCodec {
    PhysicalCodec::new(Arc::new(DefaultPhysicalExtensionCodec {}))
}

fn logical() -> LogicalCodec {
    LogicalCodec::new(Arc::new(DefaultLogicalExtensionCodec {}))
}

async fn planned(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
    ctx.sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap()
}

async fn run(plan: Arc<dyn ExecutionPlan>, ctx: &SessionContext) -> String {
    let batches = collect(plan, ctx.task_ctx()).await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

/// Decodes in a fresh uqcast session, as another process would.
fn decoded(bytes: &[u8], codec: &PhysicalCodec) -> Result<Arc<dyn ExecutionPlan>> {
    physical_plan_from_bytes_with_extension_codec(bytes, &new_context().task_ctx(), codec)
}

fn shown(plan: &Arc<dyn ExecutionPlan>) -> String {
    displayable(plan.as_ref()).indent(true).to_string()
}

/// `plan` to bytes and rebuilt by `codec` in a fresh session; the rebuilt
/// plan must print as the planned one, but for the size of a scan's table:
/// a rebuilt scan opens only the files its steps are in. The bytes come
/// back too, to decode again later.
fn round_trip(
    plan: &Arc<dyn ExecutionPlan>,
    codec: &PhysicalCodec,
) -> (Vec<u8>, Arc<dyn ExecutionPlan>) {
    let bytes = physical_plan_to_bytes_with_extension_codec(plan.clone(), &physical())
        .unwrap()
        .to_vec();
    let again = decoded(&bytes, codec).unwrap();
    assert_eq!(
        without_table_size(&shown(&again)),
        without_table_size(&shown(plan))
    );
    (bytes, again)
}

/// `NetcdfExec: files=F, steps=S/T, …` as `NetcdfExec: steps=S, …`.
fn without_table_size(plan: &str) -> String {
    plan.lines()
        .map(|line| match line.split_once("NetcdfExec: files=") {
            Some((indent, rest)) => {
                let (_, rest) = rest.split_once(", steps=").unwrap();
                let (steps, rest) = rest.split_once(", ").unwrap();
                let read = steps.split('/').next().unwrap();
                format!("{indent}NetcdfExec: steps={read}, {rest}\n")
            }
            None => format!("{line}\n"),
        })
        .collect()
}

const SCORES: &str = "SELECT valid_time, count(*) AS cells, avg(t2m) AS mean_t2m, \
     sum(crps_gaussian(t2m, 280.0, 4.0)) AS crps \
     FROM era5 WHERE valid_time >= '2021-01-01T12:00:00Z' AND latitude < 30 \
     GROUP BY valid_time ORDER BY valid_time";

/// A scan with pushed-down time and latitude filters, an aggregate with a
/// skill function and a sort: the rebuilt plan reads the same steps and
/// cells, and gives the same table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_and_its_functions_run_the_same_after_the_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = era5(dir.path()).await;
    let plan = planned(&ctx, SCORES).await;
    assert!(
        shown(&plan).contains("NetcdfExec: files=2, steps=6/8"),
        "{}",
        shown(&plan)
    );
    let (_, again) = round_trip(&plan, &physical());
    let expected = run(plan, &ctx).await;
    assert_eq!(
        expected.lines().count(),
        6 + 4,
        "six steps of two rows:\n{expected}"
    );
    assert!(expected.contains("| 8     |"), "{expected}");
    assert_eq!(run(again, &ctx).await, expected);
}

/// Files that no longer hold the planned steps are refused, naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_refuses_files_changed_since_planning() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = era5(dir.path()).await;
    let bytes =
        physical_plan_to_bytes_with_extension_codec(planned(&ctx, SCORES).await, &physical())
            .unwrap();
    write_steps(&dir.path().join("b.nc"), 8);
    let e = decoded(&bytes, &physical()).unwrap_err().to_string();
    assert!(
        e.contains("step 2021-01-02T00:00:00Z planned, not in the files"),
        "{e}"
    );
    assert!(e.contains("a.nc … ") && e.contains("b.nc (2 files)"), "{e}");
    assert!(e.contains("changed since the query was planned"), "{e}");
    std::fs::remove_file(dir.path().join("b.nc")).unwrap();
    let e = decoded(&bytes, &physical()).unwrap_err().to_string();
    assert!(e.contains("b.nc: no such file"), "{e}");

    // An executor's codec stands in for the scan, so the task fails when
    // run, with the reason: its plan decodes, with the scan's columns and
    // partitions (no field metadata, which came from the files).
    let planned = planned(&ctx, SCORES).await;
    let stood_in = decoded(&bytes, &physical().standing_in_for_refusals()).unwrap();
    let shape = |plan: &Arc<dyn ExecutionPlan>| {
        let scan = find_node(plan, "NetcdfExec").or_else(|| find_node(plan, "RefusedExec"));
        let scan = scan.expect("a scan or its stand-in");
        let fields: Vec<_> = scan
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
            .collect();
        (
            fields,
            scan.properties().output_partitioning().partition_count(),
        )
    };
    assert_eq!(shape(&stood_in), shape(&planned));
    assert!(
        shown(&stood_in).contains("RefusedExec: NetcdfExec could not be rebuilt: "),
        "{}",
        shown(&stood_in)
    );
    let e = collect(stood_in, ctx.task_ctx()).await.unwrap_err();
    assert!(e.to_string().contains("b.nc: no such file"), "{e}");
}

/// The logical plan of [`SCORES`] in `ctx`, as a client sends it.
async fn scores_sent(ctx: &SessionContext) -> Vec<u8> {
    let plan = ctx
        .sql(SCORES)
        .await
        .unwrap()
        .into_optimized_plan()
        .unwrap();
    logical_plan_to_bytes_with_extension_codec(&plan, &logical())
        .unwrap()
        .to_vec()
}

/// The logical plan of a query over an ERA5 table travels (a scheduler
/// receives queries this way) and plans to the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_era5_table_travels_in_a_logical_plan() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = era5(dir.path()).await;
    let bytes = scores_sent(&ctx).await;
    let expected = run(planned(&ctx, SCORES).await, &ctx).await;
    assert_eq!(run_sent(&bytes).await, expected);
}

/// The logical plan `bytes` decoded and run in a fresh uqcast session, as
/// a scheduler would, as a table.
async fn run_sent(bytes: &[u8]) -> String {
    let other = new_context();
    let again =
        logical_plan_from_bytes_with_extension_codec(bytes, &other.task_ctx(), &logical()).unwrap();
    let batches = other
        .execute_logical_plan(again)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The steps a run leaves out travel with their times, in a logical plan
/// (where the scan takes them) and in a physical one (where a `LIMIT`
/// keeps them in a filter): a session that never registered the function
/// runs both as the client's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steps_a_run_leaves_out_travel_with_their_times() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = era5(dir.path()).await;
    let done = [0, 1, 2, 5].map(|k| START + k * 6 * HOUR);
    ctx.register_udf(TimesLeftOut::udf("left_out", done));
    let pushed = "SELECT valid_time, count(*) AS cells FROM era5 WHERE left_out(valid_time) \
                  GROUP BY valid_time ORDER BY valid_time";
    let expected = run(planned(&ctx, pushed).await, &ctx).await;
    assert_eq!(expected.lines().count(), 4 + 4, "four steps:\n{expected}");
    let plan = ctx
        .sql(pushed)
        .await
        .unwrap()
        .into_optimized_plan()
        .unwrap();
    let bytes = logical_plan_to_bytes_with_extension_codec(&plan, &logical()).unwrap();
    assert!(
        datafusion::execution::FunctionRegistry::udf(&new_context(), "left_out").is_err(),
        "a fresh session has not the function"
    );
    assert_eq!(run_sent(&bytes).await, expected);

    let filtered = "SELECT valid_time, latitude, longitude FROM \
                    (SELECT * FROM era5 LIMIT 1000) AS some WHERE left_out(valid_time) \
                    ORDER BY valid_time, latitude, longitude";
    let plan = planned(&ctx, filtered).await;
    assert!(
        shown(&plan).contains("FilterExec: left_out(valid_time"),
        "{}",
        shown(&plan)
    );
    let (_, again) = round_trip(&plan, &physical());
    let expected = run(plan, &ctx).await;
    assert_eq!(expected.lines().count(), 4 * 12 + 4, "{expected}");
    assert_eq!(run(again, &ctx).await, expected);
}

/// A scheduler's codec plans an ERA5 table from the headers the client
/// sent: with the files gone it decodes and plans the client's physical
/// plan, where a codec that opens the files cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_plans_from_headers_without_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = era5(dir.path()).await;
    let bytes = scores_sent(&ctx).await;
    let expected = shown(&planned(&ctx, SCORES).await);
    for file in ["a.nc", "b.nc"] {
        std::fs::remove_file(dir.path().join(file)).unwrap();
    }
    let other = new_context();
    let e = logical_plan_from_bytes_with_extension_codec(&bytes, &other.task_ctx(), &logical())
        .unwrap_err();
    assert!(e.to_string().contains("a.nc: no such file"), "{e}");

    let scheduler = logical().planning_from_headers();
    let again = logical_plan_from_bytes_with_extension_codec(&bytes, &other.task_ctx(), &scheduler)
        .unwrap();
    // Planned as the client's session plans (two partitions).
    let config = datafusion::prelude::SessionConfig::new().with_target_partitions(2);
    let planner = SessionContext::new_with_config(config);
    crate::session::register_functions(&planner);
    let physical = planner.state().create_physical_plan(&again).await.unwrap();
    assert_eq!(shown(&physical), expected);
}

fn train_model(path: &Path, iterations: u64) {
    let steps: Vec<uqcast_forecast::PackedStep> = (0..8)
        .map(|k| StepField {
            time: START + k * 6 * HOUR,
            values: (0..12).map(|c| t2m(k, c)).collect(),
        })
        .map(|step| uqcast_forecast::PackedStep::pack(&step))
        .collect();
    let settings = FieldTraining {
        mlp: MlpConfig {
            hidden: vec![8],
            time_dim: 4,
            ..MlpConfig::default()
        },
        patch: Patch(3),
        method: Method::Hyperdm,
        hyper: HyperConfig::default(),
        diffusion: DiffusionConfig::default(),
        train: TrainConfig {
            iterations,
            batch_size: 8,
            optimizer: AdamWConfig::default(),
            ..TrainConfig::default()
        },
        normalisation: Normalisation::default(),
        lead_hours: 6,
        sample: None,
    };
    let grid = ModelGrid::new(LAT.to_vec(), LON.to_vec());
    uqcast_forecast::model::train(
        &steps,
        &grid,
        &settings,
        "test",
        path,
        &Device::Cpu,
        |_| {},
        |_| {},
    )
    .unwrap();
}

fn forecast_sql(model: &Path) -> String {
    format!(
        "SELECT valid_time, latitude, longitude, t2m_mean, t2m_au, t2m_eu \
         FROM hyperdm_forecast('{}', 'SELECT * FROM era5 WHERE valid_time < ''2021-01-01T18:00:00Z''', \
         2, 3, 'ddim-5', 7) ORDER BY valid_time, latitude, longitude",
        model.display()
    )
}

/// The forecast operator travels with its model's path and weights id:
/// rebuilt, it samples the same numbers; a model file replaced since
/// planning is refused; the table function itself stays local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forecast_runs_the_same_after_the_round_trip_and_refuses_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = era5(dir.path()).await;
    let model: PathBuf = dir.path().join("model.safetensors");
    train_model(&model, 20);
    let sql = forecast_sql(&model);
    let plan = planned(&ctx, &sql).await;
    assert!(
        shown(&plan).contains("HyperdmExec: model=model@"),
        "{}",
        shown(&plan)
    );
    let codec = physical();
    let (bytes, again) = round_trip(&plan, &codec);
    // Steps before 18:00 are all in the first file: the only one opened.
    assert!(
        shown(&plan).contains("NetcdfExec: files=2, steps=3/8")
            && shown(&again).contains("NetcdfExec: files=1, steps=3/4"),
        "{}",
        shown(&again)
    );
    let expected = run(plan, &ctx).await;
    assert_eq!(expected.lines().count(), 3 * 12 + 4, "{expected}");
    assert_eq!(run(again, &ctx).await, expected);

    train_model(&model, 21);
    let e = decoded(&bytes, &physical()).unwrap_err().to_string();
    let refusal = "model.safetensors: model metadata field 'weights': the query was planned \
                   with model model@";
    assert!(e.contains(refusal), "{e}");
    // Stood in for on an executor: the forecast's columns, failing when run.
    let stood_in = decoded(&bytes, &physical().standing_in_for_refusals()).unwrap();
    let refused = find_node(&stood_in, "RefusedExec").expect("a stand-in");
    assert_eq!(refused.schema(), uqcast_forecast::forecast_schema());
    let e = collect(stood_in, ctx.task_ctx()).await.unwrap_err();
    assert!(e.to_string().contains(refusal), "{e}");
    // A codec that already holds the planned weights keeps using them.
    assert_eq!(run(decoded(&bytes, &codec).unwrap(), &ctx).await, expected);

    let forecast = ctx.sql(&sql).await.unwrap().into_optimized_plan().unwrap();
    let e = logical_plan_to_bytes_with_extension_codec(&forecast, &logical())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("plans its source query where it is scanned"),
        "{e}"
    );
}

/// Forecast partitioned by step (as on a cluster): the source is
/// hash-partitioned by valid time, each partition samples whole steps, and
/// the rebuilt plan, partitions and all, gives the one-partition answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forecast_partitioned_by_step_gives_the_same_forecast_after_the_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let config = datafusion::prelude::SessionConfig::new()
        .with_extension(Arc::new(uqcast_forecast::StepPartitions(2)));
    let ctx = era5_with(dir.path(), config).await;
    let model: PathBuf = dir.path().join("model.safetensors");
    train_model(&model, 20);
    let sql = forecast_sql(&model);
    let plan = planned(&ctx, &sql).await;
    assert!(
        shown(&plan).contains("RepartitionExec: partitioning=Hash([valid_time@0], 2)"),
        "{}",
        shown(&plan)
    );
    let (_, again) = round_trip(&plan, &physical());
    let other = tempfile::tempdir().unwrap();
    let one = era5(other.path()).await;
    let expected = run(planned(&one, &sql).await, &one).await;
    assert_eq!(run(plan, &ctx).await, expected);
    assert_eq!(run(again, &ctx).await, expected);
}

/// The first node named `name` in `plan`, depth first.
fn find_node(plan: &Arc<dyn ExecutionPlan>, name: &str) -> Option<Arc<dyn ExecutionPlan>> {
    if plan.name() == name {
        return Some(plan.clone());
    }
    plan.children()
        .into_iter()
        .find_map(|child| find_node(child, name))
}

fn find_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    find_node(plan, "NetcdfExec")
}

/// On a cluster a scan carries its steps as an in-memory input: the plan
/// still travels and answers the same, and when the input is cut down to
/// one task's partition (as Ballista cuts it), the scan reads only those
/// steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_carrying_its_steps_follows_its_cut_down_input() {
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::datasource::source::DataSourceExec;

    let dir = tempfile::tempdir().unwrap();
    let config = datafusion::prelude::SessionConfig::new()
        .with_extension(Arc::new(uqcast_netcdf::StepsAsInput));
    let ctx = era5_with(dir.path(), config).await;
    let sql =
        "SELECT valid_time, count(*) AS cells FROM era5 GROUP BY valid_time ORDER BY valid_time";
    let plan = planned(&ctx, sql).await;
    let (_, again) = round_trip(&plan, &physical());
    let expected = run(plan.clone(), &ctx).await;
    assert_eq!(expected.lines().count(), 8 + 4, "{expected}");
    assert_eq!(run(again, &ctx).await, expected);

    let scan = find_scan(&plan).unwrap();
    let steps = scan.children()[0].clone();
    let memory = steps
        .downcast_ref::<DataSourceExec>()
        .and_then(|e| e.data_source().downcast_ref::<MemorySourceConfig>())
        .unwrap();
    assert_eq!(memory.partitions().len(), 2);
    let second =
        MemorySourceConfig::try_new_exec(&[memory.partitions()[1].clone()], steps.schema(), None)
            .unwrap();
    use datafusion::physical_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
    let recompute = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
    let task = scan.replace_children(vec![second], recompute).unwrap();
    assert_eq!(task.properties().output_partitioning().partition_count(), 1);
    let batches = collect(task, ctx.task_ctx()).await.unwrap();
    let times: Vec<i64> = batches
        .iter()
        .map(|b| {
            use datafusion::arrow::array::AsArray;
            b.column(0)
                .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
                .value(0)
        })
        .collect();
    let second_file: Vec<i64> = (4..8).map(|k| START + k * 6 * HOUR).collect();
    assert_eq!(
        times, second_file,
        "the task reads the second partition's steps only"
    );
}
