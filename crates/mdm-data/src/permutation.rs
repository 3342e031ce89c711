//! A seeded pseudo-random permutation of `0..n` that is evaluated one index at a time.
//!
//! [`BlockLoader`](crate::shards::BlockLoader)'s default order draws every block of an epoch from
//! the whole corpus. A materialised shuffle would need a table of 8 bytes per block (2.4 GB for
//! SlimPajama's 300M blocks of 2,048 tokens) and a resume would have to rebuild it; this permutation
//! needs no table: index `i` of the epoch maps to block `perm(i)` by a balanced Feistel network over
//! the smallest even power of two `>= n`, with cycle walking to stay inside `0..n` (Black and
//! Rogaway, "Ciphers with arbitrary finite domains", 2002). Written here rather than taken from a
//! crate because it must be exact (the same seed gives the same order on every machine, forever, so
//! that a resumed run continues the same stream) and it is twenty lines.

/// Rounds of the Feistel network; four make a pseudo-random permutation (Luby and Rackoff) when the
/// round function is pseudo-random, six leave a margin for our cheap mixing function.
const ROUNDS: usize = 6;

/// A bijection of `0..len`, chosen by a 64-bit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexPermutation {
    len: u64,
    half_bits: u32,
    keys: [u64; ROUNDS],
}

/// SplitMix64's finaliser: a fast 64-bit mixing function with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl IndexPermutation {
    /// The permutation of `0..len` chosen by `key`.
    pub fn new(len: u64, key: u64) -> Self {
        // the domain 2^(2 h) must hold len - 1
        let bits = 64 - len.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut keys = [0u64; ROUNDS];
        let mut state = key;
        for k in &mut keys {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            *k = mix64(state);
        }
        Self {
            len,
            half_bits,
            keys,
        }
    }

    /// The size of the permuted range.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for &k in &self.keys {
            let next = left ^ (mix64(right ^ k) & mask);
            left = right;
            right = next;
        }
        (left << self.half_bits) | right
    }

    /// The image of `index` (`index < len`): every value of `0..len` is the image of exactly one
    /// index.
    pub fn apply(&self, index: u64) -> u64 {
        debug_assert!(index < self.len, "index {index} outside 0..{}", self.len);
        // cycle walking: the network permutes 0..2^(2h); re-apply until the value lands in range
        // (fewer than 4 rounds on average, since 2^(2h) < 4 len)
        let mut x = self.feistel(index);
        while x >= self.len {
            x = self.feistel(x);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_length_is_a_bijection(len in 1u64..3000, key in any::<u64>()) {
            let p = IndexPermutation::new(len, key);
            let mut seen = vec![false; len as usize];
            for i in 0..len {
                let j = p.apply(i);
                prop_assert!(j < len);
                prop_assert!(!seen[j as usize], "{j} twice");
                seen[j as usize] = true;
            }
        }
    }

    #[test]
    fn keys_give_different_orders_and_positions_look_uniform() {
        let n = 4000u64;
        let a: Vec<u64> = (0..n)
            .map(|i| IndexPermutation::new(n, 1).apply(i))
            .collect();
        let b: Vec<u64> = (0..n)
            .map(|i| IndexPermutation::new(n, 2).apply(i))
            .collect();
        assert_ne!(a, b);
        assert_eq!(
            a,
            (0..n)
                .map(|i| IndexPermutation::new(n, 1).apply(i))
                .collect::<Vec<_>>()
        );
        // the first tenth of the order falls evenly into 16 contiguous segments of the range
        // (what a small corpus in book order needs): 25 expected per segment
        let mut counts = [0usize; 16];
        for &j in &a[..400] {
            counts[(j * 16 / n) as usize] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - 25.0).powi(2) / 25.0)
            .sum();
        // 15 degrees of freedom: P(chi2 > 37.7) = 0.001
        assert!(chi2 < 37.7, "segments {counts:?}, chi2 {chi2}");
        // neighbouring indices do not map to neighbouring values
        let adjacent = a.windows(2).filter(|w| w[0].abs_diff(w[1]) == 1).count();
        assert!(adjacent < 20, "{adjacent} adjacent pairs");
    }

    #[test]
    fn tiny_ranges() {
        assert_eq!(IndexPermutation::new(1, 7).apply(0), 0);
        let p = IndexPermutation::new(2, 7);
        let mut v = [p.apply(0), p.apply(1)];
        v.sort();
        assert_eq!(v, [0, 1]);
    }
}
