//! How well a score (EU) separates positives (out-of-distribution cells)
//! from negatives: ranking (AUROC) and precision over recall (AUPRC).

/// Area under the ROC curve of `scores` for `labels` (true = positive):
/// the probability that a random positive outscores a random negative,
/// ties counting one half (Mann–Whitney U / (n₊ n₋)). `None` without both
/// classes or with a NaN score.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.iter().any(|s| s.is_nan()) || scores.len() != labels.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mid-ranks (1-based) over runs of equal scores.
    let mut rank_sum_positive = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_positive += order[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * mid;
        i = j + 1;
    }
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    Some((rank_sum_positive - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// Area under the precision–recall curve as average precision:
/// Σₖ (Rₖ − Rₖ₋₁)·Pₖ over the distinct score thresholds, highest first, with
/// tied scores entering together (the step-wise estimator of scikit-learn's
/// `average_precision_score`, without interpolation). `None` without a
/// positive, with a NaN score or with mismatched lengths.
pub fn auprc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.iter().any(|s| s.is_nan()) || scores.len() != labels.len() {
        return None;
    }
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut seen, mut area, mut recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        tp += order[i..=j].iter().filter(|&&k| labels[k]).count();
        seen += j - i + 1;
        let next_recall = tp as f64 / positives as f64;
        area += (next_recall - recall) * tp as f64 / seen as f64;
        recall = next_recall;
        i = j + 1;
    }
    Some(area)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKLEARN_AUROC: f64 = 0.8;
    const SKLEARN_AP: f64 = 0.7644444444444445;

    #[test]
    fn auroc_by_hand() {
        // Positives 0.9 and 0.4; negatives 0.5, 0.1, 0.4:
        // 0.9 beats all 3; 0.4 beats 0.1, ties 0.4 (½), loses to 0.5 → 4.5 / 6.
        let s = [0.9, 0.5, 0.1, 0.4, 0.4];
        let l = [true, false, false, true, false];
        assert!((auroc(&s, &l).unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(auroc(&[1.0, 2.0], &[false, true]), Some(1.0));
        assert_eq!(auroc(&[1.0, 2.0], &[true, false]), Some(0.0));
        assert_eq!(auroc(&[1.0, 1.0], &[true, false]), Some(0.5));
        assert_eq!(auroc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn auprc_by_hand() {
        // Scores 0.9(+) 0.5(−) 0.4(+) 0.4(−) 0.1(−): thresholds 0.9 → R ½, P 1;
        // 0.5 → R ½; {0.4, 0.4} → R 1, P 2/4. AP = ½·1 + ½·½ = 0.75.
        let s = [0.9, 0.5, 0.1, 0.4, 0.4];
        let l = [true, false, false, true, false];
        assert!((auprc(&s, &l).unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(auprc(&[1.0, 2.0], &[false, true]), Some(1.0));
        assert_eq!(auprc(&[1.0, 2.0], &[false, false]), None);
    }

    /// scikit-learn 1.9.1 (`roc_auc_score`, `average_precision_score`) on
    /// the same 12 scores and labels.
    #[test]
    fn matches_scikit_learn() {
        let s = [
            0.12, 0.95, 0.33, 0.33, 0.71, 0.05, 0.88, 0.40, 0.61, 0.27, 0.71, 0.90,
        ];
        let l = [
            false, true, false, true, true, false, false, false, true, false, false, true,
        ];
        assert!((auroc(&s, &l).unwrap() - SKLEARN_AUROC).abs() < 1e-12);
        assert!((auprc(&s, &l).unwrap() - SKLEARN_AP).abs() < 1e-12);
    }
}
