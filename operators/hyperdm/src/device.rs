//! Which device computes: the first GPU when built with `cuda` and one is
//! visible, the CPU otherwise, unless `UQCAST_DEVICE` says.
//!
//! The choice matters both ways. The shipped cell model trains faster on
//! CPU cores than on an H200 (its updates are too small to fill a GPU), so
//! a `cuda` build must be able to train on the CPU; and a forecast that was
//! meant for a GPU must not quietly run on the CPU when none is visible.

use candle_core::{Device, DeviceLocation};

use crate::error::{HyperdmError, Result};

/// The variable that names the device.
const DEVICE_VAR: &str = "UQCAST_DEVICE";

/// What `UQCAST_DEVICE` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// Unset or empty: the first GPU if there is one, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

fn parse(value: &str) -> std::result::Result<Choice, String> {
    match value.trim() {
        "" => Ok(Choice::Auto),
        "cpu" => Ok(Choice::Cpu),
        "cuda" => Ok(Choice::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Choice::Cuda)
            .ok_or_else(|| "is not one of cpu, cuda, cuda:N".to_string()),
    }
}

/// The device this process computes on (see the module docs). An
/// `UQCAST_DEVICE` that cannot be met is an error naming it: a bad value,
/// `cuda` in a build without the `cuda` feature, or a GPU that is not there.
pub fn default_device() -> Result<Device> {
    let value = std::env::var(DEVICE_VAR).unwrap_or_default();
    let error = |problem: String| HyperdmError::Device {
        value: value.clone(),
        problem,
    };
    match parse(&value).map_err(error)? {
        Choice::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        Choice::Cpu => Ok(Device::Cpu),
        Choice::Cuda(_) if !cfg!(feature = "cuda") => Err(error(
            "this uqcast was built without the `cuda` feature (cargo build --features cuda)".into(),
        )),
        Choice::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| error(e.to_string())),
    }
}

/// A device as messages name it: `cpu`, `cuda:0`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_uqcast_device() {
        assert_eq!(parse(""), Ok(Choice::Auto));
        assert_eq!(parse("cpu"), Ok(Choice::Cpu));
        assert_eq!(parse(" cuda "), Ok(Choice::Cuda(0)));
        assert_eq!(parse("cuda:1"), Ok(Choice::Cuda(1)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn devices_are_named_as_messages_name_them() {
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }
}
