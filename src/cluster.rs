//! Beyond one machine: a Ballista scheduler and executors built into the
//! uqcast binary, and client sessions that send queries to them.
//!
//! ```text
//! uqcast sql --ballista df://HOST:50050 ──logical plan (LogicalCodec)──► uqcast scheduler
//!     (plans ERA5 tables from the headers the plan carries, without their files)
//!     plans stages ──physical plans (PhysicalCodec)──► uqcast executor × K
//!     (each opens the NetCDF files and models the plan names: shared storage,
//!      or its own copies of the `s3://` objects the plan names)
//! ```
//! Every process builds its sessions here, so all three register the same
//! functions and wrap Ballista's codecs in uqcast's (`session::codec`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionState;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use uqcast_forecast::{PlanSourceWhenCalled, StepPartitions};
use uqcast_netcdf::StepsAsInput;

use crate::session::codec::{LogicalCodec, PhysicalCodec};
use crate::session::object_stores::ConnectingRegistry;
use crate::session::register_functions;

mod failures;
pub use failures::failure;

fn logical_codec() -> Arc<LogicalCodec> {
    Arc::new(LogicalCodec::new(Arc::new(
        BallistaLogicalExtensionCodec::default(),
    )))
}

fn physical_codec() -> Arc<PhysicalCodec> {
    Arc::new(PhysicalCodec::new(Arc::new(
        BallistaPhysicalExtensionCodec::default(),
    )))
}

/// Ballista's session configuration with uqcast's codecs, for every role.
/// An executor's tasks run with it, so their scans' errors name S3 objects
/// by URL, not by this machine's copies, and travel to the client as
/// messages it can read out (`failures`).
fn session_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        // The static distributed planner: Ballista 55's adaptive one, given
        // a forecast whose input stage its filter emptied (a run with nothing
        // new and a source query that is not step-local), planned new
        // one-task stages without end (tests/e2e/cluster.rs).
        .with_ballista_adaptive_query_planner(false)
        .with_ballista_logical_extension_codec(logical_codec())
        .with_ballista_physical_extension_codec(physical_codec())
        .with_extension(Arc::new(crate::session::s3::file_names().as_messages()))
        .with_extension(Arc::new(crate::session::s3::local_copies()))
}

/// A scheduler's or executor's session: Ballista's, plus uqcast's functions;
/// NetCDF scans carry their steps as an input Ballista can cut per task
/// ([`StepsAsInput`]),
/// forecasts as one partition per target partition, whole steps in each
/// ([`StepPartitions`]), so executors sample different steps at once.
fn session_state(config: SessionConfig) -> datafusion::error::Result<SessionState> {
    let steps = StepPartitions(config.target_partitions());
    let config = config
        .with_extension(Arc::new(StepsAsInput))
        .with_extension(Arc::new(steps))
        .with_extension(Arc::new(crate::session::codec::model_files()));
    let state = ballista_core::utils::default_session_builder(config)?;
    let runtime = RuntimeEnvBuilder::from_runtime_env(state.runtime_env())
        .with_object_store_registry(ConnectingRegistry::shared())
        .build_arc()?;
    let state = SessionStateBuilder::new_from_existing(state)
        .with_runtime_env(runtime)
        .build();
    let ctx = SessionContext::new_with_state(state);
    register_functions(&ctx);
    Ok(ctx.state())
}

/// A client session whose queries run on the cluster at `url`
/// (`df://HOST:PORT`). Tables are registered on it as on a local one.
pub async fn client(url: &str) -> Result<SessionContext> {
    if !url.starts_with("df://") {
        bail!("--ballista {url}: expected df://HOST:PORT (a uqcast scheduler)");
    }
    // Forecast tables plan their source here, where the tables are.
    let state = session_state(session_config().with_extension(Arc::new(PlanSourceWhenCalled)))?;
    let ctx = SessionContext::remote_with_state(url, state)
        .await
        .with_context(|| format!("--ballista {url}"))?;
    // Ballista's upgrade resets the functions to its own list.
    register_functions(&ctx);
    // The scheduler gets the plan this session optimised, its scans'
    // partition filters with it.
    crate::session::step_months::enable(&ctx);
    Ok(ctx)
}

/// Runs a scheduler on `bind`, known to others as `external_host`, until
/// the process is stopped.
pub async fn scheduler(bind: SocketAddr, external_host: String) -> Result<()> {
    let mut config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host,
        ..SchedulerConfig::default()
    }
    .with_override_config_producer(Arc::new(session_config))
    .with_override_session_builder(Arc::new(session_state));
    // The scheduler plans ERA5 tables from the headers clients send: it
    // needs neither the files nor copies of the objects.
    config.override_logical_codec = Some(Arc::new(
        LogicalCodec::new(Arc::new(BallistaLogicalExtensionCodec::default()))
            .planning_from_headers(),
    ));
    config.override_physical_codec = Some(physical_codec());
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .context("scheduler: cluster state")?;
    start_server(cluster, bind, Arc::new(config))
        .await
        .with_context(|| format!("scheduler on {bind}"))
}

/// Where an executor listens, which scheduler it joins, and its resources.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub scheduler: (String, u16),
    pub bind: std::net::IpAddr,
    /// `None`: the scheduler uses the address it sees the executor connect from.
    pub external_host: Option<String>,
    pub port: u16,
    pub grpc_port: u16,
    pub work_dir: PathBuf,
    pub concurrent_tasks: usize,
}

/// Runs an executor until the process is stopped.
pub async fn executor(settings: ExecutorSettings) -> Result<()> {
    std::fs::create_dir_all(&settings.work_dir)
        .with_context(|| format!("--work-dir {}", settings.work_dir.display()))?;
    let registry = BallistaFunctionRegistry::from(&session_state(session_config())?);
    // Tasks spill here, as Ballista's own runtime would have them do.
    let work_dir = settings.work_dir.clone();
    let config = ExecutorProcessConfig {
        scheduler_host: settings.scheduler.0.clone(),
        scheduler_port: settings.scheduler.1,
        bind_host: settings.bind.to_string(),
        external_host: settings.external_host.clone(),
        port: settings.port,
        grpc_port: settings.grpc_port,
        work_dir: Some(settings.work_dir.to_string_lossy().into_owned()),
        vcores: settings.concurrent_tasks,
        // Ballista installs the pool on each task's runtime, this limit
        // split across the tasks run at once (its own default: 70% of the
        // host's memory, whatever UQCAST_QUERY_MEMORY_GB says).
        memory_pool_size: crate::session::memory::limit_bytes().ok(),
        print_thread_info: false,
        override_config_producer: Some(Arc::new(session_config)),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| {
            RuntimeEnvBuilder::new()
                .with_temp_file_path(&work_dir)
                .with_object_store_registry(ConnectingRegistry::shared())
                .build_arc()
        })),
        override_logical_codec: Some(logical_codec()),
        // Tasks this executor cannot rebuild fail when run, so their
        // reasons reach the client (`session::codec::refused`).
        override_physical_codec: Some(Arc::new(
            PhysicalCodec::new(Arc::new(BallistaPhysicalExtensionCodec::default()))
                .standing_in_for_refusals(),
        )),
        override_function_registry: Some(Arc::new(registry)),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .with_context(|| {
            format!(
                "executor on {}:{} (scheduler {}:{})",
                settings.bind, settings.port, settings.scheduler.0, settings.scheduler.1
            )
        })
}
