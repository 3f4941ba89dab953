//! How a pipeline's inputs are cut into forward passes: longest first, so that similar
//! lengths share a batch, and the results put back in input order.
//!
//! Generation takes fixed batches of `batch_size` ([`in_batches`]): each batch runs many
//! decoding steps, so more batches cost more than padding does. Encoder forwards run once, and
//! a batch of mixed lengths pads every input to its longest: [`in_buckets`] cuts each sorted
//! batch further, where the tokens that padding would add cost more than another forward pass.
//! The products sum each row as when it runs alone; a row's padding reaches its result only
//! through the attention's sums over masked keys (all-MiniLM-L6-v2's pooled vectors moved by
//! 1.2e-7 at most when the cut changed), so the cut changes the speed, not the answers.

use crate::error::{Error, Result};

/// What one forward pass costs beyond its tokens, counted in tokens. all-MiniLM-L6-v2 in f32
/// on 2 cores (AVX-512): one sequence of 18 tokens takes 3.8 ms, 32 of them 66.5 ms, i.e.
/// 2.1 ms per 18 tokens and 1.7 ms (about 15 tokens) more per forward; larger models spend
/// more per token, so fewer tokens per forward. Twice that leaves a margin for the smaller
/// products of a smaller batch.
const FORWARD_COST_TOKENS: usize = 32;

/// Run `run` over batches of at most `batch_size` items, longest first, and return one
/// result per item, in input order. `run` gets the indices of one batch and returns one
/// result per index.
pub(crate) fn in_batches<T>(
    lengths: &[usize],
    batch_size: usize,
    run: impl FnMut(&[usize]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    longest_first(lengths, batch_size, run, |sorted| {
        vec![batch_size; sorted.len().div_ceil(batch_size)]
    })
}

/// As [`in_batches`], with each batch of at most `batch_size` items cut where that saves more
/// padded tokens than [`FORWARD_COST_TOKENS`] per extra forward (see [`bucket_sizes`]).
pub(crate) fn in_buckets<T>(
    lengths: &[usize],
    batch_size: usize,
    run: impl FnMut(&[usize]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    longest_first(lengths, batch_size, run, |sorted| {
        bucket_sizes(sorted, batch_size)
    })
}

/// Sort the items longest first (ties in input order), cut them into runs of the sizes that
/// `sizes` gives for their sorted lengths, and run each (see [`run_in_order`]).
fn longest_first<T>(
    lengths: &[usize],
    batch_size: usize,
    run: impl FnMut(&[usize]) -> Result<Vec<T>>,
    sizes: impl FnOnce(&[usize]) -> Vec<usize>,
) -> Result<Vec<T>> {
    if batch_size == 0 {
        return Err(Error::InvalidInput(
            "batch_size must be at least 1".to_string(),
        ));
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let sorted: Vec<usize> = order.iter().map(|&i| lengths[i]).collect();
    run_in_order(&order, &sizes(&sorted), run)
}

/// The sizes of consecutive runs of `sorted` (lengths, longest first) that cost the fewest
/// padded tokens plus [`FORWARD_COST_TOKENS`] per run, none over `batch_size` items. A run
/// pads to its first length, so a run from i to j costs `sorted[i] · (j − i)` tokens;
/// the best cut of the first j items is the best over the start i of their last run
/// (dynamic programming, O(items · batch_size)).
fn bucket_sizes(sorted: &[usize], batch_size: usize) -> Vec<usize> {
    let n = sorted.len();
    // cost[j]: the least cost of the first j items; start[j]: where their last run starts.
    let mut cost = vec![0usize; n + 1];
    let mut start = vec![0usize; n + 1];
    for j in 1..=n {
        let (best_start, best_cost) = (j.saturating_sub(batch_size)..j)
            .map(|i| {
                let run = sorted[i].saturating_mul(j - i);
                (
                    i,
                    cost[i]
                        .saturating_add(run)
                        .saturating_add(FORWARD_COST_TOKENS),
                )
            })
            // The latest start among equal costs: full batches first, as fixed batches are.
            .min_by_key(|&(i, cost)| (cost, std::cmp::Reverse(i)))
            .unwrap_or((0, 0));
        cost[j] = best_cost;
        start[j] = best_start;
    }
    let mut sizes = Vec::new();
    let mut end = n;
    while end > 0 {
        sizes.push(end - start[end]);
        end = start[end];
    }
    sizes.reverse();
    sizes
}

/// Run `run` on consecutive runs of `order` of the given sizes; the results in input order.
fn run_in_order<T>(
    order: &[usize],
    sizes: &[usize],
    mut run: impl FnMut(&[usize]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut results: Vec<Option<T>> = (0..order.len()).map(|_| None).collect();
    let mut rest = order;
    for &size in sizes {
        let (batch, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        let outputs = run(batch)?;
        if outputs.len() != batch.len() {
            return Err(Error::InvalidInput(
                "a batch returned the wrong number of results".to_string(),
            ));
        }
        for (&index, output) in batch.iter().zip(outputs) {
            results[index] = Some(output);
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.ok_or_else(|| Error::InvalidInput("a batch left an input without result".to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batches (as input indices) made of `lengths`, in buckets or fixed, and the
    /// results put back in order (each item's result is its index).
    fn batches(
        lengths: &[usize],
        batch_size: usize,
        bucketed: bool,
    ) -> (Vec<Vec<usize>>, Vec<usize>) {
        let mut seen = Vec::new();
        let run = |batch: &[usize]| {
            seen.push(batch.to_vec());
            Ok(batch.to_vec())
        };
        let results = match bucketed {
            true => in_buckets(lengths, batch_size, run),
            false => in_batches(lengths, batch_size, run),
        };
        (seen, results.expect("batches"))
    }

    #[test]
    fn fixed_batches_take_the_longest_first_and_answer_in_input_order() {
        let (seen, results) = batches(&[3, 9, 5, 9, 1], 2, false);
        assert_eq!(seen, vec![vec![1, 3], vec![2, 0], vec![4]]);
        assert_eq!(results, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn equal_lengths_share_one_forward_up_to_the_batch_size() {
        let lengths = [18; 40];
        let (seen, _) = batches(&lengths, 32, true);
        assert_eq!(seen.iter().map(Vec::len).collect::<Vec<_>>(), vec![32, 8]);
    }

    #[test]
    fn mixed_lengths_are_cut_where_padding_costs_more_than_a_forward() {
        // 4 of 130 tokens and 28 of 12: one forward pads 32 × 130 = 4160 tokens; two cost
        // 4 × 130 + 28 × 12 = 856 tokens plus one more forward.
        let lengths: Vec<usize> = (0..32).map(|i| if i % 8 == 0 { 130 } else { 12 }).collect();
        let (seen, results) = batches(&lengths, 32, true);
        assert_eq!(
            seen,
            vec![vec![0, 8, 16, 24], (0..32).filter(|i| i % 8 != 0).collect()]
        );
        assert_eq!(results, (0..32).collect::<Vec<_>>());
    }

    #[test]
    fn small_differences_stay_in_one_forward() {
        // Cutting 20, 20 | 19 × 6 saves 6 padded tokens, less than a forward costs.
        let lengths = [20, 19, 19, 20, 19, 19, 19, 19];
        let (seen, _) = batches(&lengths, 32, true);
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_bucket_never_exceeds_the_batch_size() {
        let lengths: Vec<usize> = (0..100).map(|i| 10 + i % 7).collect();
        let (seen, results) = batches(&lengths, 16, true);
        assert!(seen.iter().all(|batch| batch.len() <= 16));
        assert_eq!(results, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_zero_batch_size_is_an_error() {
        assert!(in_buckets(&[1, 2], 0, |batch| Ok(batch.to_vec())).is_err());
        assert!(in_batches(&[1, 2], 0, |batch| Ok(batch.to_vec())).is_err());
    }
}
