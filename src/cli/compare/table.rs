//! The comparison as the terminal shows it: one aligned row per method,
//! then what the rows add up to (training time relative to one network,
//! what mixing the members gains, the paper's claims checked).

use super::claims::paper_claims;
use super::{MethodScores, SINGLE};

/// The training time of one plain network, and where it comes from: the
/// `single` row when there is one, else the ensemble's time over its M
/// members (they train in lock step, so this slightly flatters the others).
/// MC-Dropout is no unit: drawing its masks makes it slower than one network.
fn one_network_seconds(rows: &[MethodScores]) -> Option<(f64, String)> {
    if let Some(r) = rows.iter().find(|r| r.method == SINGLE) {
        return Some((r.train_seconds, SINGLE.to_string()));
    }
    rows.iter()
        .find(|r| r.method == "ensemble" && r.members > 0)
        .map(|r| {
            (
                r.train_seconds / r.members as f64,
                format!("ensemble ÷ {}", r.members),
            )
        })
}

/// Why a method with members has no EU scores: every held-out forecast
/// started from an in-distribution step (the OOD disk lies on the held-out
/// span's third step, so it is an input only with four steps or more).
pub(super) const NO_OOD_INPUT: &str = "EU ROC and EU PR are dashes where no held-out forecast \
     started from the OOD disk (it lies on the held-out span's third step): \
     --test-steps 4 or more makes it an input";

/// The comparison as an aligned table.
pub(super) fn table(rows: &[MethodScores]) -> String {
    // A score that does not apply (EU of one network) reads as a dash.
    let or_dash = |x: f64| {
        if x.is_finite() {
            format!("{x:.3}")
        } else {
            "—".into()
        }
    };
    let mut s = format!(
        "{:<11} {:>6} {:>7} {:>7} {:>9} {:>7} {:>8} {:>6} {:>6} {:>7} {:>7} {:>9} {:>9}\n",
        "method",
        "SSIM",
        "PSNR",
        "CRPS",
        "CRPS(N)",
        "RMSE",
        "RMSE(w)",
        "SSR",
        "AU r",
        "EU ROC",
        "EU PR",
        "train s",
        "sample s"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<11} {:>6.3} {:>7.2} {:>7.3} {:>9.3} {:>7.3} {:>8.3} {:>6.2} {:>6.2} {:>7} {:>7} {:>9.1} {:>9.1}\n",
            r.method,
            r.ssim,
            r.psnr,
            r.crps,
            r.crps_gaussian,
            r.rmse,
            r.rmse_lat_weighted,
            r.spread_skill,
            r.au_correlation,
            or_dash(r.eu_auroc),
            or_dash(r.eu_auprc),
            r.train_seconds,
            r.sample_seconds
        ));
    }
    let one_network = one_network_seconds(rows);
    if let Some((seconds, unit)) = &one_network {
        let ratios: Vec<String> = rows
            .iter()
            .filter(|r| r.method != SINGLE)
            .map(|r| format!("{} {:.2}×", r.method, r.train_seconds / seconds))
            .collect();
        if !ratios.is_empty() {
            s.push_str(&format!(
                "training time relative to one network ({unit}, {seconds:.1} s): {}\n",
                ratios.join(", ")
            ));
        }
    }
    // The members' own CRPS against their mixture's: whether the M members
    // average out each other's errors (independent networks do) or are,
    // in-distribution, one network.
    let gains: Vec<String> = rows
        .iter()
        .filter(|r| r.members > 1)
        .map(|r| format!("{} {:.4}", r.method, r.crps_member - r.crps))
        .collect();
    if !gains.is_empty() {
        s.push_str(&format!(
            "CRPS gained by mixing the members (one member's CRPS − the table's, K): {}\n",
            gains.join(", ")
        ));
    }
    // A method with members but no EU score had no OOD input to find: say
    // so, rather than leave its dashes to read like one network's.
    if rows
        .iter()
        .any(|r| r.members > 1 && !(r.eu_auroc.is_finite() && r.eu_auprc.is_finite()))
    {
        s.push_str(&format!("{NO_OOD_INPUT}\n"));
    }
    let claims = paper_claims(rows, one_network.as_ref());
    if !claims.is_empty() {
        // One run is one seed: a gap smaller than the seeds' spread
        // (docs/hyperdm-vs-ensemble.md) decides nothing.
        s.push_str("the HyperDM paper's claims on this run (one seed):\n");
        for claim in claims {
            s.push_str(&format!("  {claim}\n"));
        }
    }
    if let Some(r) = rows.iter().find(|r| r.method != SINGLE).or(rows.first()) {
        s.push_str(&format!(
            "(M={} N={}, {} updates per network; CRPS and RMSE in K, SSIM/PSNR of the mean on the [-1, 1] scale; SSR = spread-skill, 1 is calibrated)",
            r.members, r.samples, r.iterations
        ));
    }
    s
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn row(method: &str, members: usize, train_seconds: f64) -> MethodScores {
        MethodScores {
            method: method.into(),
            ssim: 0.95,
            psnr: 40.0,
            crps: 0.5,
            crps_member: 0.5,
            crps_gaussian: 0.5,
            rmse: 0.95,
            rmse_lat_weighted: 0.95,
            spread_skill: 0.9,
            au_correlation: 0.9,
            eu_auroc: if method == SINGLE { f64::NAN } else { 0.98 },
            eu_auprc: if method == SINGLE { f64::NAN } else { 0.4 },
            rank_histogram: vec![0.1; 10],
            train_seconds,
            sample_seconds: 1.0,
            members,
            samples: 16,
            iterations: 12000,
        }
    }

    /// Training time is relative to one plain network: the `single` row
    /// when run, else the ensemble's time per member, never MC-Dropout
    /// (slower than one network by its mask draws).
    #[test]
    fn training_time_is_relative_to_one_network() {
        let mut rows = vec![
            row("hyperdm", 4, 70.0),
            row("mc-dropout", 4, 94.0),
            row("ensemble", 4, 200.0),
            row(SINGLE, 1, 50.0),
        ];
        let t = table(&rows);
        assert!(
            t.contains(
                "relative to one network (single, 50.0 s): hyperdm 1.40×, mc-dropout 1.88×, ensemble 4.00×"
            ),
            "{t}"
        );
        // The footer names the compared methods' M and N, not the single's.
        assert!(t.contains("(M=4 N=16, 12000 updates"), "{t}");
        // One network has no EU: its EU columns read as dashes.
        let single = t.lines().find(|l| l.starts_with(SINGLE)).unwrap();
        assert_eq!(single.matches('—').count(), 2, "{single}");
        assert!(!t.contains("NaN"), "{t}");
        // The paper's claims follow the lines they rest on.
        assert!(
            t.contains(
                "the HyperDM paper's claims on this run (one seed):\n  HyperDM ≥ deep ensemble on CRPS: holds"
            ),
            "{t}"
        );

        // Only methods with several members have a mixing gain.
        assert!(
            t.contains(
                "mixing the members (one member's CRPS − the table's, K): hyperdm 0.0000, mc-dropout 0.0000, ensemble 0.0000\n"
            ),
            "{t}"
        );
        rows[2].crps_member = 0.5031;
        assert!(
            table(&rows).contains("ensemble 0.0031\n"),
            "{}",
            table(&rows)
        );

        // Members but no EU score: the held-out span gave no OOD input,
        // and the table says why; one network's dashes need no such line.
        assert!(!t.contains(NO_OOD_INPUT), "{t}");
        rows[0].eu_auroc = f64::NAN;
        rows[0].eu_auprc = f64::NAN;
        let t = table(&rows);
        assert!(t.contains(NO_OOD_INPUT), "{t}");
        rows[0].eu_auroc = 0.98;
        rows[0].eu_auprc = 0.4;

        rows.pop();
        let t = table(&rows);
        assert!(
            t.contains("(ensemble ÷ 4, 50.0 s): hyperdm 1.40×, mc-dropout 1.88×, ensemble 4.00×"),
            "{t}"
        );
        rows.pop();
        assert!(!table(&rows).contains("relative to one network"));
    }
}
