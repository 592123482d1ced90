//! Plan serialisation: uqcast's operators through DataFusion's protobuf
//! codecs, so a plan made in one process runs in another (a distributed
//! scheduler hands plans to executors this way).
//!
//! DataFusion encodes its own operators and expressions; these codecs add
//! the ERA5 table and scan (`uqcast_netcdf::spec`) and the forecast operator
//! (`uqcast_forecast::spec`). The payload is JSON, tagged by node kind, so a
//! plan carries names, settings and step times, never data: the decoding
//! process opens the same files and model (shared storage) and checks they
//! are the ones planned with. Functions (`crps_gaussian`, …) travel by name
//! and are found in the decoding session, which must be a uqcast session; the
//! one function with state, the steps a run leaves out, carries its times.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{TableReference, not_impl_err};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::{
    logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};
use uqcast_forecast::{
    ForecastModel, ForecastSpec, ForecastTable, HyperdmExec, ModelFiles, Source, forecast_schema,
};
use uqcast_netcdf::spec::{ScanSpec, TableHeaders, TableSpec};
use uqcast_netcdf::{Era5TableProvider, NetcdfExec, TimesLeftOut};

use crate::session::s3::file_names;
use objects::{Objects, described, inbound, model_inbound, model_outbound, outbound, stamped};
use recent::Recent;
use refused::RefusedExec;

/// Marks uqcast's payloads among those of the codec it wraps (Ballista's
/// own nodes, protobuf), which it hands everything else to.
const MAGIC: &[u8] = b"uqcast\0";

/// One uqcast node of a plan, as it travels.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "node", content = "spec", rename_all = "snake_case")]
enum Node {
    NetcdfScan {
        scan: Box<ScanSpec>,
        #[serde(default)]
        objects: Objects,
    },
    HyperdmForecast(ForecastSpec),
}

/// One uqcast table of a logical plan, as it travels.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "table", content = "spec", rename_all = "snake_case")]
enum LogicalNode {
    Era5 {
        table: TableSpec,
        #[serde(default)]
        objects: Objects,
        /// What the files held when the client planned: a scheduler plans
        /// from these without the files (see [`LogicalCodec::planning_from_headers`]).
        #[serde(default)]
        headers: Option<TableHeaders>,
    },
    Forecast(ForecastTableSpec),
}

/// A forecast table: the operator's settings and its source's logical plan
/// (DataFusion's protobuf, its tables encoded by this codec).
#[derive(Debug, Serialize, Deserialize)]
struct ForecastTableSpec {
    forecast: ForecastSpec,
    source: Vec<u8>,
}

fn encode<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    buf.extend_from_slice(MAGIC);
    serde_json::to_writer(buf, value).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// The payload, if `buf` is one of uqcast's.
fn ours(buf: &[u8]) -> Option<&[u8]> {
    buf.strip_prefix(MAGIC)
}

/// A function that holds state, as it travels (others travel by name and
/// are found in the decoding session).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "function", content = "spec", rename_all = "snake_case")]
enum Function {
    /// The steps a run leaves out (`uqcast_not_forecast`), registered only
    /// in the client's session.
    TimesLeftOut { name: String, micros: Vec<i64> },
}

/// `node` encoded into `buf`, if it is a function of uqcast's with state.
fn encode_udf(node: &ScalarUDF, buf: &mut Vec<u8>) -> Option<Result<()>> {
    let left_out = node.inner().downcast_ref::<TimesLeftOut>()?;
    let function = Function::TimesLeftOut {
        name: node.name().to_string(),
        micros: left_out.micros().to_vec(),
    };
    Some(encode(&function, buf))
}

fn decode_udf(payload: &[u8]) -> Result<Arc<ScalarUDF>> {
    match decode(payload, "function")? {
        Function::TimesLeftOut { name, micros } => Ok(Arc::new(TimesLeftOut::udf(&name, micros))),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(buf: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(buf).map_err(|e| {
        DataFusionError::Plan(format!(
            "a serialised {what} is not one this uqcast build reads \
             (built from another version?): {e}"
        ))
    })
}

/// Runs blocking work (opening files, loading a model) without stalling
/// the async workers when on a multi-threaded runtime; a plain call otherwise.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Where `hyperdm_forecast(…)` finds a model's files: a local path as it is,
/// an `s3://` model in this process's copy (as a decoded plan's model).
pub fn model_files() -> ModelFiles {
    ModelFiles(Arc::new(model_inbound))
}

/// Waits for `future` from synchronous code (the codec's), on the runtime
/// it is called from when that can block, else on a runtime of its own.
fn wait<F>(future: F) -> Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            Ok(tokio::task::block_in_place(|| h.block_on(future)))
        }
        // A current-thread runtime cannot block in place: another thread waits.
        _ => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    Ok(runtime.block_on(future))
                })
                .join()
                .map_err(|_| DataFusionError::Internal("a plan's download panicked".into()))?
        }),
    }
}

/// The physical codec: `NetcdfExec` and `HyperdmExec`.
///
/// Models are loaded once per file and weights id, on the device this
/// process forecasts with, and shared by every plan that names them; the
/// [`MODELS_KEPT`] most recently used stay loaded between plans.
/// Every other node goes to the wrapped codec.
#[derive(Debug)]
pub struct PhysicalCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
    models: Mutex<Recent<(PathBuf, String), Arc<ForecastModel>>>,
    /// Whether a node that cannot be rebuilt decodes as a [`RefusedExec`]
    /// (an executor's codec), rather than failing to decode.
    stands_in: bool,
}

/// Models an executor keeps loaded: a job's model and a few analysts' ones.
pub const MODELS_KEPT: usize = 4;

impl PhysicalCodec {
    pub fn new(inner: Arc<dyn PhysicalExtensionCodec>) -> Self {
        Self {
            inner,
            models: Mutex::new(Recent::new(MODELS_KEPT)),
            stands_in: false,
        }
    }

    /// The same, decoding a node it cannot rebuild as a [`RefusedExec`] that
    /// fails with the reason when run: for an executor, whose decoding
    /// errors Ballista does not pass on (see `codec::refused`).
    pub fn standing_in_for_refusals(self) -> Self {
        Self {
            stands_in: true,
            ..self
        }
    }

    fn model(&self, spec: &ForecastSpec) -> Result<Arc<ForecastModel>> {
        let key = (spec.model_path.clone(), spec.model_id.clone());
        if let Some(model) = self.models.lock().map_err(poisoned)?.get(&key) {
            return Ok(model);
        }
        let device = uqcast_hyperdm::default_device()
            .map_err(|e| DataFusionError::External(e.to_string().into()))?;
        let local = model_inbound(&spec.model_path)?;
        let model = Arc::new(blocking(|| {
            ForecastModel::load(&local, &device).map_err(DataFusionError::from)
        })?);
        // Refuse a file replaced since planning before it is cached.
        spec.check_model(&model)?;
        self.models
            .lock()
            .map_err(poisoned)?
            .insert(key, model.clone());
        Ok(model)
    }

    /// Rebuilds one of uqcast's plan nodes, or stands in for it (see
    /// [`Self::standing_in_for_refusals`]). The files and models were opened
    /// from this process's copies; errors name them as the planner did.
    fn decode_node(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node = decode::<Node>(buf, "plan node")?;
        let stand_in = self.stands_in.then(|| stand_in_shape(&node, inputs));
        match (self.rebuild(node, inputs), stand_in) {
            (Err(e), Some(Ok((name, schema, partitions)))) => {
                let e = file_names().apply(e);
                Ok(Arc::new(RefusedExec::new(name, &e, schema, partitions)))
            }
            (rebuilt, _) => rebuilt.map_err(|e| file_names().apply(e)),
        }
    }

    fn rebuild(
        &self,
        node: Node,
        inputs: &[Arc<dyn ExecutionPlan>],
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match node {
            Node::NetcdfScan { scan, objects } => {
                // Objects are fetched when the scan reads them, and only
                // what it reads (records of a long object: see s3::partial).
                let files = described(&scan.table.files, &objects)?;
                let scan = NetcdfExec::from_described(&scan, files)?;
                match inputs {
                    [] => Ok(Arc::new(scan)),
                    [steps] => Ok(Arc::new(scan.over_steps(steps.clone())?)),
                    _ => Err(DataFusionError::Plan(format!(
                        "a serialised NetcdfExec has {} inputs, expected at most 1",
                        inputs.len()
                    ))),
                }
            }
            Node::HyperdmForecast(spec) => {
                let [input] = inputs else {
                    return Err(DataFusionError::Plan(format!(
                        "a serialised HyperdmExec has {} inputs, expected 1",
                        inputs.len()
                    )));
                };
                let model = self.model(&spec)?;
                Ok(Arc::new(HyperdmExec::from_spec(
                    &spec,
                    input.clone(),
                    model,
                )?))
            }
        }
    }
}

/// What a node was planned to produce, from its spec and inputs alone: its
/// name, schema and partition count.
fn stand_in_shape(
    node: &Node,
    inputs: &[Arc<dyn ExecutionPlan>],
) -> Result<(&'static str, SchemaRef, usize)> {
    let input_partitions = || match inputs {
        [input] => Ok(input.properties().output_partitioning().partition_count()),
        _ => Err(DataFusionError::Plan(format!(
            "a serialised plan node has {} inputs, expected 1",
            inputs.len()
        ))),
    };
    match node {
        Node::NetcdfScan { scan, .. } => {
            let partitions = match inputs {
                [] => scan.partitions.len(),
                [steps] => uqcast_netcdf::steps_input::times_of(steps)?.len(),
                _ => input_partitions()?,
            };
            Ok(("NetcdfExec", scan.planned_schema()?, partitions))
        }
        Node::HyperdmForecast(_) => Ok(("HyperdmExec", forecast_schema(), input_partitions()?)),
    }
}

fn poisoned<T>(_: T) -> DataFusionError {
    DataFusionError::Internal("the model cache's lock was poisoned by a panic".into())
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(buf) = ours(buf) else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        self.decode_node(buf, inputs)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(scan) = node.downcast_ref::<NetcdfExec>() {
            let mut scan = scan.spec();
            let objects = outbound(&mut scan.table.files);
            let scan = Box::new(scan);
            encode(&Node::NetcdfScan { scan, objects }, buf)
        } else if let Some(forecast) = node.downcast_ref::<HyperdmExec>() {
            let mut spec = forecast.spec();
            spec.model_path = model_outbound(&spec.model_path);
            encode(&Node::HyperdmForecast(spec), buf)
        } else {
            self.inner.try_encode(node, buf, proto_converter)
        }
    }

    // Functions travel by name, the wrapped codec deciding how, but for a
    // run's steps left out, which travel with their times.
    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match ours(buf) {
            Some(payload) => decode_udf(payload),
            None => self.inner.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        match encode_udf(node, buf) {
            Some(done) => done,
            None => self.inner.try_encode_udf(node, buf),
        }
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }
}

/// The logical codec: ERA5 NetCDF tables; every other table, node and
/// file format goes to the wrapped codec (Parquet tables are DataFusion's).
#[derive(Debug)]
pub struct LogicalCodec {
    inner: Arc<dyn LogicalExtensionCodec>,
    /// Whether ERA5 tables are rebuilt from their headers, without opening
    /// their files (a scheduler's codec).
    from_headers: bool,
}

impl LogicalCodec {
    pub fn new(inner: Arc<dyn LogicalExtensionCodec>) -> Self {
        Self {
            inner,
            from_headers: false,
        }
    }

    /// The same, rebuilding ERA5 tables from the headers the client sent:
    /// for a scheduler, which plans and never reads. It then needs neither
    /// the files nor copies of the objects (executors fetch their own, and
    /// check them against the plan); tables of clients that send no headers
    /// are opened as before.
    pub fn planning_from_headers(self) -> Self {
        Self {
            from_headers: true,
            ..self
        }
    }

    /// Rebuilds one of uqcast's tables.
    fn decode_table(
        &self,
        payload: &[u8],
        table_ref: &TableReference,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match decode::<LogicalNode>(payload, &format!("table {table_ref}"))? {
            LogicalNode::Era5 {
                mut table,
                objects,
                headers: Some(headers),
            } if self.from_headers => {
                stamped(&mut table.files, &objects);
                Ok(Arc::new(Era5TableProvider::from_headers(&table, &headers)?))
            }
            LogicalNode::Era5 {
                mut table, objects, ..
            } => {
                inbound(&mut table.files, &objects)?;
                Ok(Arc::new(blocking(|| Era5TableProvider::from_spec(&table))?))
            }
            LogicalNode::Forecast(spec) => {
                let source = logical_plan_from_bytes_with_extension_codec(&spec.source, ctx, self)?;
                let forecast = spec.forecast;
                let device = uqcast_hyperdm::default_device()
                    .map_err(|e| DataFusionError::External(e.to_string().into()))?;
                let local = model_inbound(&forecast.model_path)?;
                let model = blocking(|| {
                    ForecastModel::load(&local, &device).map_err(DataFusionError::from)
                })?;
                forecast.check_model(&model)?;
                Ok(Arc::new(ForecastTable::with_source(
                    Arc::new(model),
                    Source::Plan(source),
                    forecast.settings,
                    forecast.skip.into_iter().collect(),
                )))
            }
        }
    }
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        let Some(payload) = ours(buf) else {
            return self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx);
        };
        // As for plan nodes: errors name objects, not this process's copies.
        self.decode_table(payload, table_ref, ctx)
            .map_err(|e| file_names().apply(e))
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(table) = node.downcast_ref::<Era5TableProvider>() {
            let headers = Some(table.headers());
            let mut table = table.spec();
            let objects = outbound(&mut table.files);
            return encode(
                &LogicalNode::Era5 {
                    table,
                    objects,
                    headers,
                },
                buf,
            );
        }
        if let Some(table) = node.downcast_ref::<ForecastTable>() {
            let Source::Plan(source) = table.source() else {
                return not_impl_err!(
                    "table {table_ref}: this hyperdm_forecast(…) table plans its source query \
                     where it is scanned, against this session's tables, so it cannot travel \
                     (a cluster client's session plans it when called)"
                );
            };
            let model = table.model();
            let spec = ForecastTableSpec {
                forecast: ForecastSpec {
                    model_path: model_outbound(&model.path),
                    model_id: model.id.clone(),
                    settings: *table.settings(),
                    skip: table.skip().iter().copied().collect(),
                    // Decided where the table is scanned (StepPartitions).
                    partitions: 1,
                },
                source: logical_plan_to_bytes_with_extension_codec(source, self)?.to_vec(),
            };
            return encode(&LogicalNode::Forecast(spec), buf);
        }
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match ours(buf) {
            Some(payload) => decode_udf(payload),
            None => self.inner.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        match encode_udf(node, buf) {
            Some(done) => done,
            None => self.inner.try_encode_udf(node, buf),
        }
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }
}

mod objects;
mod recent;
mod refused;
#[cfg(test)]
mod tests;
