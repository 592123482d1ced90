//! The `era5` table contract (see `schemas/era5.json`): column names, Arrow
//! types, and CF `units`/`long_name` as field metadata.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::catalog::T2M;
use crate::inspect::VariableInfo;

pub const VALID_TIME: &str = "valid_time";
pub const LATITUDE: &str = "latitude";
pub const LONGITUDE: &str = "longitude";
/// Number of coordinate columns before the data variables.
pub const COORDINATES: usize = 3;

/// The Arrow type of `valid_time`.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn field(
    name: &str,
    data_type: DataType,
    nullable: bool,
    units: Option<&str>,
    long_name: Option<&str>,
) -> Field {
    let mut metadata = HashMap::new();
    if let Some(u) = units {
        metadata.insert("units".to_string(), u.to_string());
    }
    if let Some(l) = long_name {
        metadata.insert("long_name".to_string(), l.to_string());
    }
    Field::new(name, data_type, nullable).with_metadata(metadata)
}

/// The table schema for the given data variables: coordinates, then the
/// variables in order. `t2m` always carries the contract's units (K).
pub fn era5_schema(variables: &[VariableInfo]) -> SchemaRef {
    let mut fields = vec![
        field(VALID_TIME, time_type(), false, None, Some("time")),
        field(
            LATITUDE,
            DataType::Float64,
            false,
            Some("degrees_north"),
            Some("latitude"),
        ),
        field(
            LONGITUDE,
            DataType::Float64,
            false,
            Some("degrees_east"),
            Some("longitude"),
        ),
    ];
    for v in variables {
        fields.push(if v.name == T2M {
            field(
                T2M,
                DataType::Float32,
                true,
                Some("K"),
                Some("2 metre temperature"),
            )
        } else {
            field(
                &v.name,
                DataType::Float32,
                true,
                v.units.as_deref(),
                v.long_name.as_deref(),
            )
        });
    }
    Arc::new(Schema::new(fields))
}

/// Whether a CF units string means kelvin.
pub fn is_kelvin(units: Option<&str>) -> bool {
    matches!(
        units.map(str::trim),
        Some("K" | "k" | "kelvin" | "Kelvin" | "degK" | "deg_K")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cf::Packing;
    use crate::inspect::StoredType;

    fn contract() -> Schema {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/era5.json");
        let text =
            std::fs::read_to_string(path).expect("schemas/era5.json is part of the repository");
        serde_json::from_str(&text).expect("schemas/era5.json is an Arrow schema")
    }

    #[test]
    fn code_matches_the_era5_contract() {
        let t2m = VariableInfo {
            name: T2M.into(),
            stored: StoredType::I16,
            packing: Packing::default(),
            units: Some("K".into()),
            long_name: Some("whatever the file says".into()),
            expver: None,
        };
        assert_eq!(era5_schema(&[t2m]).as_ref(), &contract());
    }

    #[test]
    fn kelvin_spellings() {
        assert!(is_kelvin(Some("K")) && is_kelvin(Some("kelvin ")));
        assert!(!is_kelvin(Some("degC")) && !is_kelvin(None));
    }
}
