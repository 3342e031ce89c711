//! How equal confidences are ranked.
//!
//! The references pick the `k` most confident positions with `torch.topk` over a row of
//! confidences (`-inf` where nothing is to be revealed). Among equal confidences its choice is
//! unspecified by PyTorch, but fixed by its CPU kernel (`TopKImpl.h`): the row's `(value, index)`
//! pairs, in index order, go through libstdc++'s `std::partial_sort` when `64 k <= n`, else
//! `std::nth_element` at `k - 1` followed by `std::sort` of the first `k - 1`, all with the
//! comparison "greater (NaN first)". Equal confidences are common in Dream's decoding: with
//! `top_p` a position whose nucleus holds one token has confidence exactly 1. [`torch_topk`]
//! replays those algorithms step for step (introselect with median-of-three pivots, heap select,
//! introsort with a final insertion sort, thresholds 3 and 16, depth `2 floor(log2 n)`), so
//! [`Ties::Torch`] reveals the positions Dream's code reveals. It is written here because no crate
//! reproduces libstdc++'s element order; Rust's own selection and sorting order ties differently.

use serde::{Deserialize, Serialize};

/// How a rule ranks proposals of equal confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Ties {
    /// The earlier slot first (SMDM; LLaDA's and Fast-dLLM's LLaDA code agree on their fixtures).
    #[default]
    First,
    /// As `torch.topk` on the CPU orders them over the row the references rank (Dream's
    /// `diffusion_generate`, Fast-dLLM's Dream block decoding).
    Torch,
}

type Elem = (f32, usize);

/// `x` before `y`: larger first, NaN before anything else (`TopKImpl.h`'s comparison).
fn before(x: &Elem, y: &Elem) -> bool {
    (x.0.is_nan() && !y.0.is_nan()) || x.0 > y.0
}

/// The indices `torch.topk(values, k, largest=True, sorted=True)` returns on the CPU, in its
/// order (`k` is capped at the row's length).
pub fn torch_topk(values: &[f32], k: usize) -> Vec<usize> {
    let n = values.len();
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    let mut q: Vec<Elem> = values.iter().copied().zip(0..).collect();
    if k * 64 <= n {
        heap_select(&mut q, 0, k, n);
        sort_heap(&mut q, 0, k);
    } else {
        nth_element(&mut q, k - 1);
        sort(&mut q[..k - 1]);
    }
    q[..k].iter().map(|e| e.1).collect()
}

/// `floor(log2(n))` for `n >= 1` (libstdc++'s `__lg`).
fn lg(n: usize) -> usize {
    (usize::BITS - 1 - n.leading_zeros()) as usize
}

/// `std::nth_element(q.begin(), q.begin() + nth, q.end())`.
fn nth_element(q: &mut [Elem], nth: usize) {
    let n = q.len();
    if n == 0 || nth == n {
        return;
    }
    let (mut first, mut last) = (0, n);
    let mut depth = 2 * lg(n);
    while last - first > 3 {
        if depth == 0 {
            heap_select(q, first, nth + 1, last);
            q.swap(first, nth);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(q, first, last);
        if cut <= nth {
            first = cut;
        } else {
            last = cut;
        }
    }
    insertion_sort(q, first, last);
}

/// `std::sort` (introsort, then the final insertion sort).
fn sort(q: &mut [Elem]) {
    let n = q.len();
    if n == 0 {
        return;
    }
    introsort_loop(q, 0, n, 2 * lg(n));
    if n > 16 {
        insertion_sort(q, 0, 16);
        for i in 16..n {
            linear_insert(q, i);
        }
    } else {
        insertion_sort(q, 0, n);
    }
}

fn introsort_loop(q: &mut [Elem], first: usize, mut last: usize, mut depth: usize) {
    while last - first > 16 {
        if depth == 0 {
            heap_select(q, first, last, last);
            sort_heap(q, first, last);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(q, first, last);
        introsort_loop(q, cut, last, depth);
        last = cut;
    }
}

/// `__unguarded_partition_pivot`: the median of `first + 1`, the middle and `last - 1` moved to
/// `first`, then Hoare's partition around it.
fn partition_pivot(q: &mut [Elem], first: usize, last: usize) -> usize {
    let mid = first + (last - first) / 2;
    let (a, b, c) = (first + 1, mid, last - 1);
    let median = if before(&q[a], &q[b]) {
        if before(&q[b], &q[c]) {
            b
        } else if before(&q[a], &q[c]) {
            c
        } else {
            a
        }
    } else if before(&q[a], &q[c]) {
        a
    } else if before(&q[b], &q[c]) {
        c
    } else {
        b
    };
    q.swap(first, median);
    let (mut lo, mut hi) = (first + 1, last);
    loop {
        while before(&q[lo], &q[first]) {
            lo += 1;
        }
        hi -= 1;
        while before(&q[first], &q[hi]) {
            hi -= 1;
        }
        if lo >= hi {
            return lo;
        }
        q.swap(lo, hi);
        lo += 1;
    }
}

/// `__insertion_sort` of `first..last`.
fn insertion_sort(q: &mut [Elem], first: usize, last: usize) {
    if first == last {
        return;
    }
    for i in first + 1..last {
        if before(&q[i], &q[first]) {
            let v = q[i];
            q.copy_within(first..i, first + 1);
            q[first] = v;
        } else {
            linear_insert(q, i);
        }
    }
}

/// `__unguarded_linear_insert`: `q[i]` moved down past every element it goes before.
fn linear_insert(q: &mut [Elem], mut i: usize) {
    let v = q[i];
    while before(&v, &q[i - 1]) {
        q[i] = q[i - 1];
        i -= 1;
    }
    q[i] = v;
}

/// `__heap_select(first, middle, last)`: a heap of `first..middle` keeps the best seen.
fn heap_select(q: &mut [Elem], first: usize, middle: usize, last: usize) {
    make_heap(q, first, middle);
    for i in middle..last {
        if before(&q[i], &q[first]) {
            // __pop_heap(first, middle, i)
            let v = q[i];
            q[i] = q[first];
            adjust_heap(q, first, 0, middle - first, v);
        }
    }
}

fn make_heap(q: &mut [Elem], first: usize, last: usize) {
    let len = last - first;
    if len < 2 {
        return;
    }
    let mut parent = (len - 2) / 2;
    loop {
        let v = q[first + parent];
        adjust_heap(q, first, parent, len, v);
        if parent == 0 {
            return;
        }
        parent -= 1;
    }
}

fn sort_heap(q: &mut [Elem], first: usize, mut last: usize) {
    while last - first > 1 {
        last -= 1;
        let v = q[last];
        q[last] = q[first];
        adjust_heap(q, first, 0, last - first, v);
    }
}

/// `__adjust_heap` with `__push_heap`: the hole at `hole` sifted down to a leaf, then `v` pushed
/// up from there.
fn adjust_heap(q: &mut [Elem], first: usize, mut hole: usize, len: usize, v: Elem) {
    let top = hole;
    let mut child = hole;
    while child < len.saturating_sub(1) / 2 {
        child = 2 * (child + 1);
        if before(&q[first + child], &q[first + child - 1]) {
            child -= 1;
        }
        q[first + hole] = q[first + child];
        hole = child;
    }
    if len & 1 == 0 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        q[first + hole] = q[first + child - 1];
        hole = child - 1;
    }
    let mut parent = hole.saturating_sub(1) / 2;
    while hole > top && before(&q[first + parent], &v) {
        q[first + hole] = q[first + parent];
        hole = parent;
        parent = hole.saturating_sub(1) / 2;
    }
    q[first + hole] = v;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn the_values_are_the_k_largest_in_order_whatever_the_ties() {
        let mut rng = mdm_core::rng_from_seed(3);
        for n in [1usize, 2, 3, 4, 5, 16, 17, 22, 40, 64, 100, 300, 1000] {
            for k in [1usize, 2, 3, 5, 8, 16, 17, 40] {
                // few distinct values: many ties
                let values: Vec<f32> = (0..n)
                    .map(|_| match rng.random_range(0..4) {
                        0 => f32::NEG_INFINITY,
                        v => v as f32 / 4.0,
                    })
                    .collect();
                let picked = torch_topk(&values, k);
                assert_eq!(picked.len(), k.min(n));
                let mut sorted = values.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let got: Vec<f32> = picked.iter().map(|&i| values[i]).collect();
                assert_eq!(got, sorted[..k.min(n)], "n {n} k {k}");
                let mut unique = picked.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), picked.len(), "n {n} k {k}: an index twice");
            }
        }
    }

    /// `tests/data/torch_topk.json`: rows of few distinct values (many ties, `-inf` among them)
    /// and the indices `torch.topk(row, k)` returned, made by PyTorch 2.15.0 on Linux x86-64
    /// (float32 CPU tensors; the script is in docs/decoding.md, "Equal confidences").
    #[test]
    fn equal_values_are_picked_as_torch_picks_them() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/torch_topk.json"
        ))
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = json["cases"].as_array().unwrap();
        assert!(cases.len() > 300);
        let mut index_order = 0;
        for case in cases {
            let values: Vec<f32> = case["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().map_or(f32::NEG_INFINITY, |x| x as f32))
                .collect();
            let k = case["k"].as_u64().unwrap() as usize;
            let expected: Vec<usize> = case["indices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(torch_topk(&values, k), expected, "{values:?}, k {k}");
            // how often a stable ranking (ties to the earlier index) would agree
            let mut stable: Vec<usize> = (0..values.len()).collect();
            stable.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
            index_order += usize::from(stable[..k] == expected[..]);
        }
        assert!(index_order < cases.len(), "the cases tell the orders apart");
    }
}
