//! Training pairs drawn from a span longer than training needs to hold
//! (`[train] max_pairs`).
//!
//! Training draws its minibatch rows from every cell of every pair, and
//! holds each step it pairs whole (2 bytes a cell). Over a long span that
//! is more steps than memory holds, and more rows than 48,000 updates of
//! 2,048 ever see. A sample keeps the seasons and years of the span: the
//! span's pairs, in time order, are cut into `max` runs of (nearly) equal
//! length and one pair is drawn from each, so the sample is spread over
//! the whole span, and the same seed and span give the same pairs (which
//! keeps an interrupted training resumable).

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The pairs drawn from a span; only their steps need to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSample {
    /// Initial times (UTC microseconds) of the pairs drawn.
    pub starts: BTreeSet<i64>,
    /// Pairs in the whole span.
    pub in_span: usize,
    /// Steps of the whole span without a step exactly one lead later.
    pub unpaired: usize,
    lead_micros: i64,
}

impl PairSample {
    /// `max` of the pairs (t, t + lead) among `times`, one from each of
    /// `max` equal runs of them in time order; `None` where the span holds
    /// no more than `max` pairs (every pair is trained on).
    pub fn draw(times: &BTreeSet<i64>, lead_micros: i64, max: usize, seed: u64) -> Option<Self> {
        let pairs: Vec<i64> = times
            .iter()
            .copied()
            .filter(|t| times.contains(&(t + lead_micros)))
            .collect();
        if pairs.len() <= max || max == 0 {
            return None;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let run = |k: usize| k * pairs.len() / max;
        let starts = (0..max)
            .map(|k| pairs[rng.random_range(run(k)..run(k + 1))])
            .collect();
        Some(Self {
            starts,
            in_span: pairs.len(),
            unpaired: times.len() - pairs.len(),
            lead_micros,
        })
    }

    /// The steps the pairs drawn are made of.
    pub fn steps(&self) -> BTreeSet<i64> {
        let lead = self.lead_micros;
        self.starts.iter().flat_map(|&t| [t, t + lead]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;

    /// Every 6 hours for `days` days, but for the times in `gaps` (hours).
    fn span(days: i64, gaps: &[i64]) -> BTreeSet<i64> {
        (0..days * 4)
            .map(|k| k * 6)
            .filter(|h| !gaps.contains(h))
            .map(|h| h * H)
            .collect()
    }

    #[test]
    fn a_span_with_no_more_pairs_than_asked_is_trained_whole() {
        let times = span(2, &[]);
        assert_eq!(PairSample::draw(&times, 6 * H, 7, 0), None);
        assert_eq!(PairSample::draw(&times, 6 * H, 100, 0), None);
        assert!(PairSample::draw(&times, 6 * H, 6, 0).is_some());
    }

    #[test]
    fn one_pair_is_drawn_from_each_equal_run_of_the_span() {
        // 400 days, a gap at hour 30: 1,599 steps, 1,597 pairs (the gap
        // breaks two, the last step has no partner).
        let times = span(400, &[30]);
        let sample = PairSample::draw(&times, 6 * H, 100, 7).unwrap();
        assert_eq!((sample.in_span, sample.unpaired), (1597, 2));
        assert_eq!(sample.starts.len(), 100);
        let pairs: Vec<i64> = times
            .iter()
            .copied()
            .filter(|t| times.contains(&(t + 6 * H)))
            .collect();
        for (k, start) in sample.starts.iter().enumerate() {
            // Run k holds pairs k·1597/100 up to (k + 1)·1597/100.
            let at = pairs.binary_search(start).unwrap();
            assert!(
                (k * 1597 / 100..(k + 1) * 1597 / 100).contains(&at),
                "{k}: {at}"
            );
        }
        // Each pair's steps, and nothing else, are read.
        let steps = sample.steps();
        assert!(steps.len() <= 200 && steps.len() > 100, "{}", steps.len());
        for t in &sample.starts {
            assert!(steps.contains(t) && steps.contains(&(t + 6 * H)));
        }
        assert!(steps.iter().all(|t| times.contains(t)));
    }

    #[test]
    fn the_seed_decides_the_pairs_and_gives_the_same_ones_again() {
        let times = span(100, &[]);
        let draw = |seed| PairSample::draw(&times, 6 * H, 40, seed).unwrap().starts;
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        // Not simply the first pair of every run.
        let firsts: BTreeSet<i64> = (0..40).map(|k| k * 399 / 40 * 6 * H).collect();
        assert_ne!(draw(3), firsts);
    }

    #[test]
    fn a_lead_of_two_steps_pairs_across_one() {
        let times = span(3, &[]);
        let sample = PairSample::draw(&times, 12 * H, 3, 0).unwrap();
        assert_eq!((sample.in_span, sample.unpaired), (10, 2));
        assert!(
            sample
                .starts
                .iter()
                .all(|t| sample.steps().contains(&(t + 12 * H)))
        );
    }
}
