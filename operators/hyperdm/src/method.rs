//! Where a member's weights come from: HyperDM and the two baselines the
//! paper compares it with. Everything else (primary network, schedule,
//! sampler, moments) is shared, so the methods differ only in this choice.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{HyperdmError, Result};

/// The uncertainty method of a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Method {
    /// A hyper-network maps z ~ N(0, I) to the weights: M draws of z are M
    /// networks from one trained model.
    #[default]
    Hyperdm,
    /// One network trained with dropout; member i keeps one dropout mask
    /// fixed for all its N samples (Gal & Ghahramani 2016).
    McDropout {
        /// Probability of dropping a hidden unit (the paper: 0.3).
        p: f64,
    },
    /// `members` networks trained independently from their own
    /// initialisations and minibatches (DPS-UQ, a deep ensemble).
    Ensemble { members: usize },
}

impl Method {
    /// The paper's dropout rate for the MC-Dropout baseline.
    pub const DROPOUT_P: f64 = 0.3;

    /// The name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hyperdm => "hyperdm",
            Self::McDropout { .. } => "mc-dropout",
            Self::Ensemble { .. } => "ensemble",
        }
    }

    /// A method from its name; `members` sizes an ensemble.
    pub fn from_name(name: &str, members: usize) -> Result<Self> {
        match name {
            "hyperdm" => Ok(Self::Hyperdm),
            "mc-dropout" => Ok(Self::McDropout { p: Self::DROPOUT_P }),
            "ensemble" => Ok(Self::Ensemble { members }),
            other => Err(HyperdmError::Config {
                field: "method",
                problem: format!("'{other}' is not one of hyperdm, mc-dropout, ensemble"),
            }),
        }
        .and_then(Self::validated)
    }

    /// Whether a forecast can draw `members` weight draws: a hyper-network
    /// and dropout masks give any number, an ensemble at most its networks.
    pub fn check_members(&self, members: usize) -> std::result::Result<(), String> {
        match self {
            Self::Ensemble { members: have } if members > *have => Err(format!(
                "an ensemble of {have} networks gives at most {have} members, {members} were asked for"
            )),
            _ => Ok(()),
        }
    }

    /// Checks the method's own settings.
    pub fn validated(self) -> Result<Self> {
        match self {
            Self::McDropout { p } if !(0.0..1.0).contains(&p) => Err(HyperdmError::Config {
                field: "method.p",
                problem: format!("dropout probability {p} is outside [0, 1)"),
            }),
            Self::Ensemble { members: 0 } => Err(HyperdmError::Config {
                field: "method.members",
                problem: "an ensemble needs at least one member".into(),
            }),
            ok => Ok(ok),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hyperdm => write!(f, "hyperdm"),
            Self::McDropout { p } => write!(f, "mc-dropout(p={p})"),
            Self::Ensemble { members } => write!(f, "ensemble({members})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_ensemble_limits_the_members() {
        assert!(Method::Hyperdm.check_members(1000).is_ok());
        assert!(Method::McDropout { p: 0.3 }.check_members(1000).is_ok());
        let two = Method::Ensemble { members: 2 };
        assert!(two.check_members(2).is_ok());
        assert_eq!(
            two.check_members(3).unwrap_err(),
            "an ensemble of 2 networks gives at most 2 members, 3 were asked for"
        );
    }

    #[test]
    fn names_round_trip_and_bad_settings_are_refused() {
        for m in [
            Method::Hyperdm,
            Method::McDropout { p: 0.3 },
            Method::Ensemble { members: 5 },
        ] {
            assert_eq!(Method::from_name(m.name(), 5).unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Method>(&json).unwrap(), m);
        }
        assert!(Method::from_name("dropout", 5).is_err());
        assert!(Method::from_name("ensemble", 0).is_err());
        assert!(Method::McDropout { p: 1.0 }.validated().is_err());
    }
}
