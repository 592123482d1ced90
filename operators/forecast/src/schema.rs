//! The `forecast` table contract (see `schemas/forecast.json`).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

pub const INIT_TIME: &str = "init_time";
pub const VALID_TIME: &str = "valid_time";
pub const T2M_MEAN: &str = "t2m_mean";
pub const T2M_AU: &str = "t2m_au";
pub const T2M_EU: &str = "t2m_eu";

fn field(name: &str, data_type: DataType, units: Option<&str>, long_name: &str) -> Field {
    let mut metadata = HashMap::from([("long_name".to_string(), long_name.to_string())]);
    if let Some(u) = units {
        metadata.insert("units".to_string(), u.to_string());
    }
    Field::new(name, data_type, false).with_metadata(metadata)
}

fn time() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// One row per grid cell and forecast: the input step's columns (its
/// `valid_time` as `init_time`) plus the forecast's valid time and moments.
pub fn forecast_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field(INIT_TIME, time(), None, "initial time of the forecast"),
        field(VALID_TIME, time(), None, "valid time of the forecast"),
        field(
            "latitude",
            DataType::Float64,
            Some("degrees_north"),
            "latitude",
        ),
        field(
            "longitude",
            DataType::Float64,
            Some("degrees_east"),
            "longitude",
        ),
        field(
            "t2m",
            DataType::Float32,
            Some("K"),
            "2 metre temperature at the initial time",
        ),
        field(
            T2M_MEAN,
            DataType::Float32,
            Some("K"),
            "forecast 2 metre temperature (predictive mean)",
        ),
        field(
            T2M_AU,
            DataType::Float32,
            Some("K**2"),
            "aleatoric variance of the forecast, E_i[Var_j]",
        ),
        field(
            T2M_EU,
            DataType::Float32,
            Some("K**2"),
            "epistemic variance of the forecast, Var_i[E_j]",
        ),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_matches_the_forecast_contract() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/forecast.json");
        let text = std::fs::read_to_string(path).unwrap();
        let contract: Schema = serde_json::from_str(&text).unwrap();
        assert_eq!(*forecast_schema(), contract);
    }
}
