//! Batch packing, as pure functions over token lengths, so the policy is tested without a
//! model. A forward pass costs its padded size, `texts × longest`, so texts of similar
//! length are packed together.

/// The bounds of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassLimits {
    /// Most texts in one pass.
    pub max_texts: usize,
    /// Most padded tokens (`texts × longest`) in one pass. A single text longer than this
    /// still runs, alone.
    pub max_tokens: usize,
}

impl Default for PassLimits {
    fn default() -> Self {
        Self { max_texts: 64, max_tokens: 1024 }
    }
}

fn fits(count: usize, longest: usize, limits: PassLimits) -> bool {
    count <= limits.max_texts && count * longest <= limits.max_tokens
}

/// Splits a known set of texts into passes: sorted by length, then cut greedily.
/// Returns indices into `lengths`; every index appears in exactly one pass.
pub fn plan_passes(lengths: &[usize], limits: PassLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut passes = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so the newcomer is the longest of the pass.
        if !current.is_empty() && !fits(current.len() + 1, lengths[i], limits) {
            passes.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        passes.push(current);
    }
    passes
}

/// Picks the next pass from a queue in arrival order (`lengths[0]` is the oldest).
///
/// The oldest entry always goes, so nothing starves; the rest are taken nearest its
/// length first, while the pass stays within `limits`. Returns ascending indices.
pub fn pack(lengths: &[usize], limits: PassLimits) -> Vec<usize> {
    let Some(&anchor) = lengths.first() else {
        return Vec::new();
    };
    let mut candidates: Vec<usize> = (1..lengths.len()).collect();
    candidates.sort_by_key(|&i| (lengths[i].abs_diff(anchor), i));
    let mut chosen = vec![0];
    let mut longest = anchor;
    for i in candidates {
        if chosen.len() == limits.max_texts {
            break;
        }
        let widest = longest.max(lengths[i]);
        if fits(chosen.len() + 1, widest, limits) {
            chosen.push(i);
            longest = widest;
        }
    }
    chosen.sort_unstable();
    chosen
}

/// Whether `pass` (what [`pack`] picked from `lengths`) is already as full as a pass
/// gets, so waiting for more texts gains nothing.
pub fn is_full(pass: &[usize], lengths: &[usize], limits: PassLimits) -> bool {
    pass.len() == limits.max_texts || lengths.iter().sum::<usize>() >= limits.max_tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: PassLimits = PassLimits { max_texts: 4, max_tokens: 40 };

    #[test]
    fn plan_covers_every_text_once_and_respects_limits() {
        for lengths in [vec![], vec![5], vec![3, 30, 4, 9, 10, 2, 11, 8, 50], vec![10; 9]] {
            let passes = plan_passes(&lengths, L);
            let mut seen: Vec<usize> = passes.concat();
            seen.sort_unstable();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for p in &passes {
                let longest = p.iter().map(|&i| lengths[i]).max().unwrap();
                assert!(p.len() == 1 || fits(p.len(), longest, L), "{p:?} of {lengths:?}");
            }
        }
    }

    #[test]
    fn plan_groups_similar_lengths() {
        // table: lengths → passes, as lengths
        let cases: &[(&[usize], &[&[usize]])] = &[
            (&[3, 30, 4, 9, 10, 2], &[&[2, 3, 4, 9], &[10], &[30]]),
            (&[50, 1], &[&[1], &[50]]),
            (&[5, 5, 5, 5, 5], &[&[5, 5, 5, 5], &[5]]),
        ];
        for (lengths, want) in cases {
            let got: Vec<Vec<usize>> = plan_passes(lengths, L).iter().map(|p| p.iter().map(|&i| lengths[i]).collect()).collect();
            assert_eq!(got, want.iter().map(|p| p.to_vec()).collect::<Vec<_>>(), "lengths {lengths:?}");
        }
    }

    #[test]
    fn pack_always_takes_the_oldest_and_prefers_its_length() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[], &[]),
            (&[100], &[0]),                           // too long for the budget: runs alone
            (&[10, 30, 9, 11, 10, 2], &[0, 2, 4, 5]), // 10, 9, then 11 would pad to 4 × 11 > 40, so 2
            (&[2, 30, 3, 2, 2, 2], &[0, 3, 4, 5]),
            (&[20, 20, 20], &[0, 1]), // 3 × 20 > 40
        ];
        for (lengths, want) in cases {
            let got = pack(lengths, L);
            let longest = got.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            assert!(got.len() <= 1 || fits(got.len(), longest, L));
            assert_eq!(&got, want, "lengths {lengths:?}");
        }
    }

    #[test]
    fn full_when_texts_or_tokens_run_out() {
        let full = |lengths: &[usize]| is_full(&pack(lengths, L), lengths, L);
        assert!(!full(&[5, 5]));
        assert!(full(&[5, 5, 5, 5]));
        assert!(full(&[39, 1]));
    }
}
