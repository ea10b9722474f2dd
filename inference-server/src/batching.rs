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

/// A pass smaller than this many padded tokens takes any text that fits: below it, a
/// forward pass gets markedly less done per token (docs/BENCHMARKS.md, bare forward by
/// batch size).
const SMALL_PASS_TOKENS: usize = 256;

/// Past [`SMALL_PASS_TOKENS`], a text joins a pass only while padding stays at most this
/// share of the pass's padded tokens: a pass of mixed lengths pays for its longest.
const MAX_PADDING: f64 = 0.05;

/// Picks the next pass from a queue in arrival order (`lengths[0]` is the oldest).
///
/// The oldest entry always goes, so nothing starves; the rest are taken nearest its
/// length first, while the pass stays within `limits` and, once it is big enough to run
/// efficiently, within [`MAX_PADDING`]. Returns ascending indices.
pub fn pack(lengths: &[usize], limits: PassLimits) -> Vec<usize> {
    let Some(&anchor) = lengths.first() else {
        return Vec::new();
    };
    let mut candidates: Vec<usize> = (1..lengths.len()).collect();
    candidates.sort_by_key(|&i| (lengths[i].abs_diff(anchor), i));
    let mut chosen = vec![0];
    let (mut longest, mut real) = (anchor, anchor);
    for i in candidates {
        if chosen.len() == limits.max_texts {
            break;
        }
        let widest = longest.max(lengths[i]);
        let padded = (chosen.len() + 1) * widest;
        let padding = (padded - real - lengths[i]) as f64 / padded as f64;
        if fits(chosen.len() + 1, widest, limits) && (padded <= SMALL_PASS_TOKENS || padding <= MAX_PADDING) {
            chosen.push(i);
            longest = widest;
            real += lengths[i];
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
    fn a_big_pass_takes_no_text_that_would_pad_it_past_the_bound() {
        let limits = PassLimits { max_texts: 64, max_tokens: 1024 };
        // The oldest is 16 tokens; twenty more of 16, ten of 17 and ten of 30 wait.
        let mut lengths = vec![16; 21];
        lengths.extend([17; 10]);
        lengths.extend([30; 10]);
        let got: Vec<usize> = pack(&lengths, limits).iter().map(|&i| lengths[i]).collect();
        // 21 × 16 fills past the small-pass size; the 17s pad it by 1/17 each at first,
        // so they wait, and the 30s are far off.
        assert_eq!(got, [16; 21]);
        // With room under the small-pass size, anything that fits goes.
        let got: Vec<usize> = pack(&[16, 17, 30, 8], limits).iter().map(|&i| [16, 17, 30, 8][i]).collect();
        assert_eq!(got, [16, 17, 30, 8]);
    }

    #[test]
    fn full_when_texts_or_tokens_run_out() {
        let full = |lengths: &[usize]| is_full(&pack(lengths, L), lengths, L);
        assert!(!full(&[5, 5]));
        assert!(full(&[5, 5, 5, 5]));
        assert!(full(&[39, 1]));
    }
}
