//! The HyperDM paper's claims, checked on the rows of one `uqcast eval`
//! run: HyperDM ≥ deep ensemble > MC-Dropout on CRPS, HyperDM trained in
//! at most 1.5× one network's time and the ensemble in about M×. Each
//! claim is stated only when the run has the methods it compares.

use super::{MethodScores, SINGLE};

/// HyperDM's training-time budget, in units of one network's time.
const HYPERDM_TIME_LIMIT: f64 = 1.5;
/// How far the ensemble's time may stray from M× one network's and still be
/// "about M×": members train in lock step, sharing the CPU's threads, so a
/// small ensemble costs a little less than M single runs.
const ENSEMBLE_TIME_TOLERANCE: f64 = 0.25;

/// One line per claim that the rows can decide: what it says, whether it
/// holds on this run, and the figures it rests on. `one_network` is the
/// unit of training time and where it came from (see
/// `one_network_seconds`); the ensemble's time is not checked against a
/// unit derived from the ensemble itself.
pub(super) fn paper_claims(
    rows: &[MethodScores],
    one_network: Option<&(f64, String)>,
) -> Vec<String> {
    let find = |name: &str| rows.iter().find(|r| r.method == name);
    let verdict = |holds: bool| if holds { "holds" } else { "does not hold" };
    let mut lines = Vec::new();
    let (hyperdm, ensemble, dropout) = (find("hyperdm"), find("ensemble"), find("mc-dropout"));
    if let (Some(h), Some(e)) = (hyperdm, ensemble) {
        lines.push(format!(
            "HyperDM ≥ deep ensemble on CRPS: {} (hyperdm {:.4} K, ensemble {:.4} K)",
            verdict(h.crps <= e.crps),
            h.crps,
            e.crps
        ));
    }
    if let (Some(e), Some(d)) = (ensemble, dropout) {
        lines.push(format!(
            "deep ensemble > MC-Dropout on CRPS: {} (ensemble {:.4} K, mc-dropout {:.4} K)",
            verdict(e.crps < d.crps),
            e.crps,
            d.crps
        ));
    }
    let Some((seconds, unit)) = one_network.filter(|(s, _)| *s > 0.0) else {
        return lines;
    };
    if let Some(h) = hyperdm {
        let ratio = h.train_seconds / seconds;
        lines.push(format!(
            "HyperDM trains within {HYPERDM_TIME_LIMIT}× one network's time: {} ({ratio:.2}×, unit: {unit})",
            verdict(ratio <= HYPERDM_TIME_LIMIT)
        ));
    }
    if let Some(e) = ensemble.filter(|_| unit == SINGLE) {
        let ratio = e.train_seconds / seconds;
        let m = e.members as f64;
        lines.push(format!(
            "the deep ensemble trains in about M× one network's time (within {:.0} %): {} ({ratio:.2}× for M = {})",
            ENSEMBLE_TIME_TOLERANCE * 100.0,
            verdict((ratio - m).abs() <= ENSEMBLE_TIME_TOLERANCE * m),
            e.members
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::compare::table::tests::row;

    fn scored(method: &str, members: usize, crps: f64, train_seconds: f64) -> MethodScores {
        MethodScores {
            crps,
            ..row(method, members, train_seconds)
        }
    }

    /// The run at the command's defaults (2026-12-03, README): the
    /// ordering on CRPS fails at HyperDM ≥ ensemble, the times hold.
    #[test]
    fn each_claim_is_decided_from_its_rows() {
        let rows = vec![
            scored("hyperdm", 10, 0.4803, 225.0),
            scored("mc-dropout", 10, 0.6105, 323.0),
            scored("ensemble", 10, 0.4638, 1638.0),
            scored(SINGLE, 1, 0.4670, 167.0),
        ];
        let unit = (167.0, SINGLE.to_string());
        assert_eq!(
            paper_claims(&rows, Some(&unit)),
            [
                "HyperDM ≥ deep ensemble on CRPS: does not hold (hyperdm 0.4803 K, ensemble 0.4638 K)",
                "deep ensemble > MC-Dropout on CRPS: holds (ensemble 0.4638 K, mc-dropout 0.6105 K)",
                "HyperDM trains within 1.5× one network's time: holds (1.35×, unit: single)",
                "the deep ensemble trains in about M× one network's time (within 25 %): holds (9.81× for M = 10)",
            ]
        );

        // Each verdict turns with its figures; a tie on CRPS counts for HyperDM.
        let mut turned = rows.clone();
        turned[0].crps = 0.4638;
        turned[0].train_seconds = 260.0;
        turned[1].crps = 0.4638;
        turned[2].train_seconds = 167.0 * 7.4;
        let lines = paper_claims(&turned, Some(&unit));
        assert!(lines[0].starts_with("HyperDM ≥ deep ensemble on CRPS: holds"));
        assert!(lines[1].starts_with("deep ensemble > MC-Dropout on CRPS: does not hold"));
        assert!(lines[2].contains(": does not hold (1.56×"), "{}", lines[2]);
        assert!(lines[3].contains(": does not hold (7.40×"), "{}", lines[3]);
    }

    /// A claim whose methods did not run is not stated; the ensemble's time
    /// is not judged against a unit taken from the ensemble itself.
    #[test]
    fn claims_need_their_methods_and_an_independent_unit() {
        let rows = vec![
            scored("hyperdm", 4, 0.48, 70.0),
            scored("ensemble", 4, 0.46, 200.0),
        ];
        let unit = (50.0, "ensemble ÷ 4".to_string());
        let lines = paper_claims(&rows, Some(&unit));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[1].ends_with("(1.40×, unit: ensemble ÷ 4)"),
            "{}",
            lines[1]
        );
        assert_eq!(paper_claims(&rows, None).len(), 1);
        assert!(paper_claims(&rows[..1], None).is_empty());
    }
}
