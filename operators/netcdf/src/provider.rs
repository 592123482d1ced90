//! `Era5TableProvider`: ERA5 NetCDF files registered as a SQL table.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Statistics;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::catalog::Catalog;
use crate::exec::NetcdfExec;
use crate::pushdown::{Selection, read_as_bounds, support};
use crate::schema::{VALID_TIME, era5_schema};
use crate::step_filters;

/// A session configuration extension: every NetCDF scan carries its steps
/// as an in-memory input, so a distributed scheduler can give each task its
/// own partitions of the scan (see `crate::steps_input`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StepsAsInput;

/// A table over one file, a directory or a glob of ERA5 NetCDF files, in
/// either CDS encoding. Columns: `valid_time`, `latitude`, `longitude`, `t2m`,
/// then the files' other (time, latitude, longitude) variables.
#[derive(Debug, Clone)]
pub struct Era5TableProvider {
    catalog: Arc<Catalog>,
    schema: SchemaRef,
}

impl Era5TableProvider {
    /// Opens every file's metadata (blocking I/O; call via `spawn_blocking`
    /// from async code). `variables`: `None` = `t2m` plus all gridded variables.
    pub fn try_new(locations: &[String], variables: Option<&[String]>) -> crate::Result<Self> {
        Ok(Self::from_catalog(Catalog::open(locations, variables)?))
    }

    /// As [`Era5TableProvider::try_new`], with the files' inspections kept
    /// in the file `kept` between commands ([`crate::kept_inspections`]).
    pub fn try_new_keeping(
        locations: &[String],
        variables: Option<&[String]>,
        kept: &std::path::Path,
    ) -> crate::Result<Self> {
        Ok(Self::from_catalog(Catalog::open_keeping(
            locations, variables, kept,
        )?))
    }

    /// The table over files already inspected, in path order. A file need
    /// not be at its path yet if the session makes it present before a scan
    /// opens it ([`crate::LocalCopies`]): an S3 object inspected from its
    /// header, to be downloaded only if a query reads its steps.
    pub fn from_files(
        mut files: Vec<crate::inspect::FileInfo>,
        variables: Option<&[String]>,
    ) -> crate::Result<Self> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files.dedup_by(|a, b| a.path == b.path);
        Ok(Self::from_catalog(Catalog::assemble(
            files, variables, true,
        )?))
    }

    pub(crate) fn from_catalog(catalog: Catalog) -> Self {
        let schema = era5_schema(&catalog.variables);
        Self {
            catalog: Arc::new(catalog),
            schema,
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}

#[async_trait]
impl TableProvider for Era5TableProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut selection = Selection::from_filters(filters);
        let on_step_time: Vec<&Expr> = filters
            .iter()
            .filter(|f| !read_as_bounds(f) && step_filters::on_step_time(f))
            .collect();
        if !on_step_time.is_empty() {
            let time_type = self.schema.field_with_name(VALID_TIME)?.data_type();
            let times: Vec<i64> = self.catalog.steps.iter().map(|s| s.time).collect();
            for filter in on_step_time {
                selection.keep_only(step_filters::times_kept(state, filter, time_type, &times)?);
            }
        }
        let exec = NetcdfExec::new(
            self.catalog.clone(),
            self.schema.clone(),
            projection,
            selection,
            limit,
            state.config().target_partitions(),
        )?;
        if state.config().get_extension::<StepsAsInput>().is_some() {
            return Ok(Arc::new(exec.with_steps_input()?));
        }
        Ok(Arc::new(exec))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters.iter().map(|f| support(f)).collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        let exec = NetcdfExec::new(
            self.catalog.clone(),
            self.schema.clone(),
            None,
            Selection::default(),
            None,
            1,
        )
        .ok()?;
        let stats = exec
            .statistics_from_inputs(&[], &datafusion::physical_plan::StatisticsArgs::new())
            .ok()?;
        Some(stats.as_ref().clone())
    }
}
