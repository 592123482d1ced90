//! Probabilistic scores of an ensemble (the M×N samples of a cell) or of a
//! Gaussian (mean and AU + EU) against the observed value.

use std::f64::consts::PI;

/// Which ensemble CRPS estimator to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CrpsEstimator {
    /// Unbiased for the CRPS of the distribution the K members are drawn
    /// from: the spread term is divided by K(K − 1) instead of K²
    /// (Ferro 2014; "fair" CRPS). An ensemble is not penalised for being small.
    #[default]
    Fair,
    /// The CRPS of the K-point empirical distribution itself (the estimator
    /// of `properscoring.crps_ensemble`).
    Classic,
}

/// CRPS of one cell's ensemble `members` for observation `obs`:
/// mean|xᵢ − y| − ½·mean over pairs of |xᵢ − xⱼ|. The pair term is computed
/// in O(K log K) from the sorted members (see [`ordered_pair_sum`]).
/// `None` for an empty ensemble, a NaN, or one member with `Fair`.
pub fn crps_ensemble(members: &[f64], obs: f64, estimator: CrpsEstimator) -> Option<f64> {
    let k = members.len();
    if k == 0 || obs.is_nan() || members.iter().any(|x| x.is_nan()) {
        return None;
    }
    let pairs = match estimator {
        CrpsEstimator::Fair if k < 2 => return None,
        CrpsEstimator::Fair => (k * (k - 1)) as f64,
        CrpsEstimator::Classic => (k * k) as f64,
    };
    Some(mean_abs_error(members, obs) - 0.5 * ordered_pair_sum(members.iter().copied()) / pairs)
}

/// CRPS of a cell's M members × N samples when sample j of every member
/// started from the same noise (common random numbers: HyperDM's sampler
/// draws them so that members differ by their weights only, which keeps
/// Monte Carlo noise out of EU). `samples` holds the cell's M·N values
/// member by member, N per member.
///
/// Such a pair, same j and two members, is not two independent draws from
/// the forecast: when the members agree it is nearly one value twice. The
/// plain fair estimator counts those pairs as independent, so its spread
/// term shrinks and the score rises by up to ½·(M − 1)/(MN − 1)·E|X − X'|
/// (2.4% of E|X − X'| at M = 4, N = 16), penalising exactly the methods
/// whose members agree. With `Fair` the spread term here averages the
/// pairs of different noise (j ≠ j'), all member pairs included, which are
/// independent draws from the members' mixture: unbiased for the mixture's
/// CRPS. With one member this is [`crps_ensemble`]. `Classic` scores the
/// M·N-point empirical distribution as it stands. `None` for a bad shape,
/// a NaN, or N < 2 with `Fair`.
pub fn crps_common_noise(
    samples: &[f64],
    members: usize,
    obs: f64,
    estimator: CrpsEstimator,
) -> Option<f64> {
    let k = samples.len();
    let per_member = samples_per_member(k, members)?;
    match estimator {
        CrpsEstimator::Classic => crps_ensemble(samples, obs, estimator),
        CrpsEstimator::Fair => {
            if per_member < 2 || obs.is_nan() || samples.iter().any(|x| x.is_nan()) {
                return None;
            }
            let all = ordered_pair_sum(samples.iter().copied());
            let same_noise: f64 = (0..per_member)
                .map(|j| ordered_pair_sum((0..members).map(|i| samples[i * per_member + j])))
                .sum();
            let pairs = (k * k - per_member * members * members) as f64;
            Some(mean_abs_error(samples, obs) - 0.5 * (all - same_noise) / pairs)
        }
    }
}

/// The members' own CRPS, averaged: member i scored from its N samples
/// alone (`samples` as in [`crps_common_noise`], N per member). It is what
/// one member would score by itself, so its excess over the mixture's
/// [`crps_common_noise`] is what drawing several members buys: nothing when
/// they are one network, more the more their errors differ. `None` as for
/// [`crps_ensemble`] on any member's samples, or for a bad shape.
pub fn crps_member_mean(
    samples: &[f64],
    members: usize,
    obs: f64,
    estimator: CrpsEstimator,
) -> Option<f64> {
    let per_member = samples_per_member(samples.len(), members)?;
    let mut total = 0.0;
    for member in samples.chunks_exact(per_member) {
        total += crps_ensemble(member, obs, estimator)?;
    }
    Some(total / members as f64)
}

/// N, when `samples` values split into `members` non-empty groups.
fn samples_per_member(samples: usize, members: usize) -> Option<usize> {
    (members > 0 && samples > 0 && samples.is_multiple_of(members)).then(|| samples / members)
}

/// mean|xᵢ − y|.
fn mean_abs_error(values: &[f64], obs: f64) -> f64 {
    values.iter().map(|x| (x - obs).abs()).sum::<f64>() / values.len() as f64
}

/// Σᵢⱼ|xᵢ − xⱼ| over ordered pairs, from the sorted values in O(K log K):
/// 2 Σₖ (2k − K + 1)·x₍ₖ₎.
fn ordered_pair_sum(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    let k = sorted.len() as f64;
    2.0 * sorted
        .iter()
        .enumerate()
        .map(|(i, x)| (2.0 * i as f64 - k + 1.0) * x)
        .sum::<f64>()
}

/// CRPS of N(`mean`, `variance`) for `obs` in closed form (Gneiting et al.
/// 2005): σ·[z(2Φ(z) − 1) + 2φ(z) − 1/√π], z = (y − μ)/σ; |y − μ| when the
/// variance is zero. `None` for a negative variance or a NaN argument.
pub fn crps_gaussian(obs: f64, mean: f64, variance: f64) -> Option<f64> {
    if variance.is_nan() || variance < 0.0 || obs.is_nan() || mean.is_nan() {
        return None;
    }
    if variance == 0.0 {
        return Some((obs - mean).abs());
    }
    let sigma = variance.sqrt();
    let z = (obs - mean) / sigma;
    let cdf = 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
    let pdf = (-0.5 * z * z).exp() / (2.0 * PI).sqrt();
    Some(sigma * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / PI.sqrt()))
}

/// Spread–skill ratio of K-member ensembles over many cells: `mean` and
/// `variance` per cell (variance with divisor K, as AU + EU is), `obs` the
/// truth. Returns √((K + 1)/K · mean(s²)) / RMSE(mean, obs) with s² the
/// unbiased (divisor K − 1) variance: for a reliable ensemble of any size
/// the expected ratio is 1 (Fortin et al. 2014). `None` without cells, with
/// K < 2 or with a perfect mean.
pub fn spread_skill(mean: &[f64], variance: &[f64], obs: &[f64], members: usize) -> Option<f64> {
    let n = mean.len();
    if n == 0 || variance.len() != n || obs.len() != n || members < 2 {
        return None;
    }
    let spread = variance.iter().sum::<f64>() / n as f64 * spread_correction(members as f64);
    let mse = mean
        .iter()
        .zip(obs)
        .map(|(m, y)| (m - y) * (m - y))
        .sum::<f64>()
        / n as f64;
    (mse > 0.0).then(|| spread.sqrt() / mse.sqrt())
}

/// The factor that turns a K-sample variance with divisor K into the
/// spread a reliable ensemble's RMSE matches: K/(K − 1) makes it unbiased,
/// (K + 1)/K adds the finite ensemble's own error, (K + 1)/(K − 1) in all.
pub(crate) fn spread_correction(k: f64) -> f64 {
    (k + 1.0) / (k - 1.0)
}

/// Rank histogram (Talagrand diagram): `samples` holds K members per cell,
/// cell after cell; bin r counts the cells whose observation has r members
/// below it (ties count half, rounded down, so the result is reproducible).
/// A reliable ensemble gives a flat histogram; a U shape means too little
/// spread. `None` if `samples` is not K × `obs.len()` or K = 0.
pub fn rank_histogram(samples: &[f64], members: usize, obs: &[f64]) -> Option<Vec<u64>> {
    if members == 0 || samples.len() != members * obs.len() {
        return None;
    }
    let mut bins = vec![0u64; members + 1];
    for (cell, &y) in samples.chunks_exact(members).zip(obs) {
        let below = cell.iter().filter(|&&x| x < y).count();
        let tied = cell.iter().filter(|&&x| x == y).count();
        bins[below + tied / 2] += 1;
    }
    Some(bins)
}

/// Rank counts (the K + 1 bins of [`rank_histogram`]) as fractions in ten
/// equal groups of the normalised rank: rank r covers [r, r + 1)/(K + 1)
/// and is shared between the groups that interval overlaps, so a flat
/// histogram reads 0.1 in every group for any K (whole ranks per group
/// would give groups of 6 and 7 ranks at K = 64). `None` without counts.
pub fn rank_deciles(counts: &[u64]) -> Option<Vec<f64>> {
    let total: u64 = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return None;
    }
    let bins = counts.len() as f64;
    let mut deciles = vec![0.0; 10];
    for (r, &count) in counts.iter().enumerate() {
        let (lo, hi) = (r as f64 / bins, (r + 1) as f64 / bins);
        for (d, share) in deciles.iter_mut().enumerate() {
            let (d_lo, d_hi) = (d as f64 / 10.0, (d + 1) as f64 / 10.0);
            let overlap = (hi.min(d_hi) - lo.max(d_lo)).max(0.0);
            *share += count as f64 * overlap / (hi - lo);
        }
    }
    Some(deciles.into_iter().map(|c| c / total as f64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crps_by_hand() {
        // Members 0, 1, y = 0.5: mean|x − y| = 0.5; pairs |0 − 1| twice.
        // Classic: 0.5 − ½·2/4 = 0.25. Fair: 0.5 − ½·2/2 = 0.
        let m = [0.0, 1.0];
        assert!((crps_ensemble(&m, 0.5, CrpsEstimator::Classic).unwrap() - 0.25).abs() < 1e-12);
        assert!(crps_ensemble(&m, 0.5, CrpsEstimator::Fair).unwrap().abs() < 1e-12);
        // One member: classic CRPS is the absolute error; fair is undefined.
        assert_eq!(
            crps_ensemble(&[2.0], 5.0, CrpsEstimator::Classic),
            Some(3.0)
        );
        assert_eq!(crps_ensemble(&[2.0], 5.0, CrpsEstimator::Fair), None);
        assert_eq!(crps_ensemble(&[], 5.0, CrpsEstimator::Classic), None);
    }

    /// The sorted form equals the O(K²) double sum, in any member order.
    #[test]
    fn sorted_pair_term_equals_the_double_sum() {
        let m = [3.0, -1.5, 0.25, 7.0, 0.25, 2.0];
        let y = 1.0;
        let k = m.len() as f64;
        let skill: f64 = m.iter().map(|x: &f64| (x - y).abs()).sum::<f64>() / k;
        let pairs: f64 = m
            .iter()
            .flat_map(|a| m.iter().map(move |b| (a - b).abs()))
            .sum();
        let fair = skill - 0.5 * pairs / (k * (k - 1.0));
        let classic = skill - 0.5 * pairs / (k * k);
        assert!((crps_ensemble(&m, y, CrpsEstimator::Fair).unwrap() - fair).abs() < 1e-12);
        assert!((crps_ensemble(&m, y, CrpsEstimator::Classic).unwrap() - classic).abs() < 1e-12);
    }

    #[test]
    fn common_noise_crps_by_hand() {
        // Members a = (0, 2), b = (1, 3); sample j of both shares noise.
        // y = 0: mean|x − y| = 6/4 = 1.5. Pairs of different noise: {0, 1}
        // against {2, 3}: 2 + 3 + 1 + 2 = 8 each way, 16 over 8 ordered
        // pairs = 2; CRPS = 1.5 − ½·2 = 0.5. The plain fair estimator
        // counts all 12 ordered pairs (sum 20): 1.5 − ½·20/12 = 2/3.
        let s = [0.0, 2.0, 1.0, 3.0];
        let c = crps_common_noise(&s, 2, 0.0, CrpsEstimator::Fair).unwrap();
        assert!((c - 0.5).abs() < 1e-12, "{c}");
        let plain = crps_ensemble(&s, 0.0, CrpsEstimator::Fair).unwrap();
        assert!((plain - 2.0 / 3.0).abs() < 1e-12, "{plain}");
        // Classic ignores the grouping; one member is the plain estimator.
        assert_eq!(
            crps_common_noise(&s, 2, 0.0, CrpsEstimator::Classic),
            crps_ensemble(&s, 0.0, CrpsEstimator::Classic)
        );
        assert_eq!(
            crps_common_noise(&s, 1, 0.7, CrpsEstimator::Fair),
            crps_ensemble(&s, 0.7, CrpsEstimator::Fair)
        );
        // Shapes that do not split into members, or one sample per member.
        assert_eq!(crps_common_noise(&s, 3, 0.0, CrpsEstimator::Fair), None);
        assert_eq!(crps_common_noise(&s, 4, 0.0, CrpsEstimator::Fair), None);
        assert_eq!(crps_common_noise(&[], 1, 0.0, CrpsEstimator::Fair), None);
        assert_eq!(crps_common_noise(&s, 0, 0.0, CrpsEstimator::Fair), None);
    }

    #[test]
    fn member_mean_crps_by_hand() {
        // Members a = (0, 2), b = (4, 6), y = 3. Each alone (fair):
        // mean|x − y| = 2, pair term ½·(2 + 2)/2 = 1, CRPS 1; mean 1.
        // Their mixture (common noise): mean|x − y| = 2; all ordered pairs
        // of {0, 2, 4, 6} sum to 40, the same-noise pairs (0, 4) and
        // (2, 6) to 16, over 16 − 2·4 = 8 pairs: 2 − ½·24/8 = 0.5. Two
        // members that miss on either side gain 0.5 by mixing.
        let s = [0.0, 2.0, 4.0, 6.0];
        let each = crps_member_mean(&s, 2, 3.0, CrpsEstimator::Fair).unwrap();
        assert!((each - 1.0).abs() < 1e-12, "{each}");
        let mixed = crps_common_noise(&s, 2, 3.0, CrpsEstimator::Fair).unwrap();
        assert!((mixed - 0.5).abs() < 1e-12, "{mixed}");
        // Classic with one sample per member: each member's absolute error.
        let c = crps_member_mean(&[1.0, 5.0], 2, 2.0, CrpsEstimator::Classic).unwrap();
        assert!((c - 2.0).abs() < 1e-12, "{c}");
        // One member is the plain estimator; bad shapes and N = 1 with the
        // fair estimator have no score.
        assert_eq!(
            crps_member_mean(&s, 1, 3.0, CrpsEstimator::Fair),
            crps_ensemble(&s, 3.0, CrpsEstimator::Fair)
        );
        assert_eq!(crps_member_mean(&s, 3, 3.0, CrpsEstimator::Fair), None);
        assert_eq!(crps_member_mean(&s, 0, 3.0, CrpsEstimator::Fair), None);
        assert_eq!(crps_member_mean(&s, 4, 3.0, CrpsEstimator::Fair), None);
        assert_eq!(crps_member_mean(&[], 1, 3.0, CrpsEstimator::Fair), None);
    }

    /// M identical members that share their noise are one member: they
    /// score exactly that member's fair CRPS (the plain estimator, counting
    /// the copies as independent, scores them worse).
    #[test]
    fn identical_members_sharing_noise_score_as_one() {
        let one = [0.3, -1.2, 2.5, 0.7, -0.4, 1.9];
        let four: Vec<f64> = (0..4).flat_map(|_| one).collect();
        let expected = crps_ensemble(&one, 0.45, CrpsEstimator::Fair).unwrap();
        let c = crps_common_noise(&four, 4, 0.45, CrpsEstimator::Fair).unwrap();
        assert!((c - expected).abs() < 1e-12, "{c} vs {expected}");
        assert!(crps_ensemble(&four, 0.45, CrpsEstimator::Fair).unwrap() > expected + 0.05);
        // Mixing them buys nothing: each scores what the mixture does.
        let each = crps_member_mean(&four, 4, 0.45, CrpsEstimator::Fair).unwrap();
        assert!((each - c).abs() < 1e-12, "{each} vs {c}");
    }

    /// E|N(m, s²)| in closed form.
    fn mean_abs_normal(m: f64, s: f64) -> f64 {
        let cdf = 0.5 * libm::erfc((m / s) / std::f64::consts::SQRT_2);
        s * (2.0 / PI).sqrt() * (-m * m / (2.0 * s * s)).exp() + m * (1.0 - 2.0 * cdf)
    }

    /// Ground truth: M = 4 members N(μᵢ, 1) sampled with common random
    /// numbers (sample j of member i is μᵢ + εⱼ, N = 16), whose mixture
    /// has the closed-form CRPS (1/M)Σᵢ E|N(μᵢ − y, 1)| −
    /// (1/2M²)Σᵢᵢ' E|N(μᵢ − μᵢ', 2)|. Over 4,000 seeded cells the estimator's
    /// mean error stays within 4 standard errors of zero, while the plain
    /// fair estimator scores higher by more than 10 standard errors of the
    /// cell-by-cell difference.
    #[test]
    fn common_noise_crps_is_unbiased_for_the_mixture() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mu = [-0.3, 0.0, 0.2, 0.5];
        let (cells, n) = (4_000, 16);
        let m = mu.len() as f64;
        let (mut ours, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..cells {
            let obs = 1.2 * Distribution::<f64>::sample(&StandardNormal, &mut rng);
            let eps: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
            let samples: Vec<f64> = mu
                .iter()
                .flat_map(|&u| eps.iter().map(move |e| u + e))
                .collect();
            let skill = mu
                .iter()
                .map(|&u| mean_abs_normal(u - obs, 1.0))
                .sum::<f64>()
                / m;
            let spread = mu
                .iter()
                .flat_map(|&a| mu.iter().map(move |&b| mean_abs_normal(a - b, 2f64.sqrt())))
                .sum::<f64>()
                / (m * m);
            let exact = skill - 0.5 * spread;
            let fair = CrpsEstimator::Fair;
            ours.push(crps_common_noise(&samples, mu.len(), obs, fair).unwrap() - exact);
            plain.push(crps_ensemble(&samples, obs, fair).unwrap() - exact);
        }
        let mean_se = |d: &[f64]| {
            let k = d.len() as f64;
            let mean = d.iter().sum::<f64>() / k;
            let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0);
            (mean, (var / k).sqrt())
        };
        let (bias, se) = mean_se(&ours);
        assert!(bias.abs() < 4.0 * se, "bias {bias}, standard error {se}");
        // The plain estimator's excess, paired cell by cell.
        let excess: Vec<f64> = plain.iter().zip(&ours).map(|(p, o)| p - o).collect();
        let (excess, excess_se) = mean_se(&excess);
        assert!(
            excess > 10.0 * excess_se,
            "plain fair excess {excess}, standard error {excess_se}"
        );
    }

    /// A flat histogram is 0.1 per group whatever K; mass at one end stays
    /// in the end group; a rank that straddles two groups is shared.
    #[test]
    fn rank_deciles_keep_a_flat_histogram_flat() {
        for k in [9, 16, 64, 100] {
            let d = rank_deciles(&vec![7; k + 1]).unwrap();
            assert!(d.iter().all(|x| (x - 0.1).abs() < 1e-12), "K = {k}: {d:?}");
        }
        let mut low = vec![0; 65];
        low[0] = 5;
        let d = rank_deciles(&low).unwrap();
        assert!((d[0] - 1.0).abs() < 1e-12);
        // Four ranks (K = 3): rank 1 covers [0.25, 0.5), of which 0.05 lies
        // in group 2 ([0.2, 0.3)) and 0.1 each in groups 3 and 4: 0.2, 0.4
        // and 0.4 of its count.
        let d = rank_deciles(&[0, 10, 0, 0]).unwrap();
        assert!(
            (d[2] - 0.2).abs() < 1e-12 && (d[3] - 0.4).abs() < 1e-12,
            "{d:?}"
        );
        assert!((d[4] - 0.4).abs() < 1e-12, "{d:?}");
        assert_eq!(rank_deciles(&[]), None);
        assert_eq!(rank_deciles(&[0, 0]), None);
    }

    const PROPERSCORING_ENSEMBLE: f64 = 0.2928571428571429;
    /// (obs, mean, variance, CRPS); properscoring takes σ = √variance.
    const PROPERSCORING_GAUSSIAN: [(f64, f64, f64, f64); 4] = [
        (0.0, 0.0, 1.0, 0.23369497725510913),
        (1.3, -0.2, 0.49, 1.1131059473223501),
        (-2.0, 0.5, 4.0, 1.5739683061262981),
        (280.1, 281.0, 0.25, 0.6321807921237284),
    ];

    /// properscoring 0.1 (`crps_ensemble`, `crps_gaussian`) on these inputs.
    #[test]
    fn matches_properscoring() {
        let m = [0.3, -1.2, 2.5, 0.7, 0.7, -0.4, 1.9];
        let c = crps_ensemble(&m, 0.45, CrpsEstimator::Classic).unwrap();
        assert!((c - PROPERSCORING_ENSEMBLE).abs() < 1e-12, "{c}");
        for (obs, mean, var, expected) in PROPERSCORING_GAUSSIAN {
            let g = crps_gaussian(obs, mean, var).unwrap();
            assert!((g - expected).abs() < 1e-10, "{obs} {mean} {var}: {g}");
        }
        assert_eq!(crps_gaussian(1.0, 3.0, 0.0), Some(2.0));
        assert_eq!(crps_gaussian(1.0, 3.0, -1.0), None);
    }

    /// Members drawn from the truth's own distribution N(0, 1): the fair
    /// CRPS matches the Gaussian CRPS in expectation; the classic estimator
    /// exceeds it by E|X − X'|/(2K) = (2/√π)/(2K). Seeded; 20,000 cells
    /// give a standard error of about 0.004, the tolerance is 0.02.
    #[test]
    fn fair_estimator_is_unbiased_for_small_ensembles() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (cells, k) = (20_000, 4);
        let (mut fair, mut classic, mut gaussian) = (0.0, 0.0, 0.0);
        for _ in 0..cells {
            let obs: f64 = StandardNormal.sample(&mut rng);
            let members: Vec<f64> = (0..k).map(|_| StandardNormal.sample(&mut rng)).collect();
            fair += crps_ensemble(&members, obs, CrpsEstimator::Fair).unwrap();
            classic += crps_ensemble(&members, obs, CrpsEstimator::Classic).unwrap();
            gaussian += crps_gaussian(obs, 0.0, 1.0).unwrap();
        }
        let n = cells as f64;
        let (fair, classic, gaussian) = (fair / n, classic / n, gaussian / n);
        let bias = 2.0 / PI.sqrt() / (2.0 * k as f64);
        assert!(
            (fair - gaussian).abs() < 0.02,
            "fair {fair} gaussian {gaussian}"
        );
        assert!(
            (classic - gaussian - bias).abs() < 0.02,
            "classic {classic} gaussian {gaussian} bias {bias}"
        );
    }

    #[test]
    fn spread_skill_by_hand() {
        // Two cells, K = 2, variance (divisor 2) 1 → unbiased 2;
        // errors 2 and 0 → RMSE √2. Ratio √(3/2 · 2)/√2 = √3/√2.
        let r = spread_skill(&[1.0, 0.0], &[1.0, 1.0], &[3.0, 0.0], 2).unwrap();
        assert!((r - (1.5f64).sqrt()).abs() < 1e-12);
        assert_eq!(spread_skill(&[1.0], &[1.0], &[1.0], 2), None);
        assert_eq!(spread_skill(&[1.0], &[1.0], &[2.0], 1), None);
    }

    #[test]
    fn rank_histogram_by_hand() {
        // K = 3. Cell 1: y below all → bin 0; cell 2: above all → bin 3;
        // cell 3: one below, one tied → 1 + ½ rounded down → bin 1.
        let samples = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
        let h = rank_histogram(&samples, 3, &[0.0, 9.0, 2.0]).unwrap();
        assert_eq!(h, vec![1, 1, 0, 1]);
        assert_eq!(rank_histogram(&samples, 2, &[0.0]), None);
    }
}
