//! The comparison helpers every numerical test relies on fail on what a broken kernel leaves
//! behind: NaN or infinity on either side, mismatched lengths, nothing at all.

mod common;

use common::{assert_close, assert_close_slices, checked_max_abs_diff, max_abs_diff};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ferroformers::{Device, Tensor};

#[test]
fn finite_values_give_the_largest_difference() {
    let diff = checked_max_abs_diff(&[1.0, -2.0, 3.5], &[1.25, -2.0, 3.0]).unwrap();
    assert_eq!(diff, 0.5);
    assert_eq!(assert_close_slices(&[1.0], &[1.0], 0.0, "equal"), 0.0);
}

#[test]
fn a_nan_or_infinity_on_either_side_is_reported_with_its_index_and_side() {
    let clean = [0.5f32, 1.0, -1.0, 2.0];
    // A NaN after the first element is the case candle's `max` and `fold(0.0, f32::max)` miss.
    for (bad, name) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let mut broken = clean;
        broken[2] = bad;
        let actual_side = checked_max_abs_diff(&broken, &clean).unwrap_err();
        assert!(
            actual_side.contains("actual[2]") && actual_side.contains(name),
            "{name} in actual: {actual_side}"
        );
        let expected_side = checked_max_abs_diff(&clean, &broken).unwrap_err();
        assert!(
            expected_side.contains("expected[2]") && expected_side.contains(name),
            "{name} in expected: {expected_side}"
        );
    }
    // NaN on both sides at the same place is still a failure, not a match.
    let both = checked_max_abs_diff(&[1.0, f32::NAN], &[1.0, f32::NAN]).unwrap_err();
    assert!(both.contains("actual[1]"), "{both}");
}

#[test]
fn mismatched_or_empty_sequences_are_not_close() {
    let short = checked_max_abs_diff(&[1.0, 2.0], &[1.0]).unwrap_err();
    assert!(short.contains("lengths differ"), "{short}");
    let empty = checked_max_abs_diff(&[], &[]).unwrap_err();
    assert!(empty.contains("nothing to compare"), "{empty}");
}

/// The panicking forms, as the model tests use them: the message says where the NaN is.
#[test]
fn tensor_comparisons_panic_on_nan_in_the_output_or_the_reference() {
    let clean = Tensor::new(&[[0.0f32, 1.0], [2.0, 3.0]], &Device::Cpu).unwrap();
    let broken = Tensor::new(&[[0.0f32, 1.0], [f32::NAN, 3.0]], &Device::Cpu).unwrap();
    // The tensors are only read, so a panic cannot leave them half-updated.
    let message = |result: std::thread::Result<()>| -> String {
        let payload = result.expect_err("the comparison must panic");
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    };
    let output = message(catch_unwind(AssertUnwindSafe(|| {
        max_abs_diff(&broken, &clean);
    })));
    assert!(output.contains("actual[2] is NaN"), "{output}");
    let reference = message(catch_unwind(AssertUnwindSafe(|| {
        assert_close(&clean, &broken, 1.0, "logits");
    })));
    assert!(
        reference.contains("logits") && reference.contains("expected[2] is NaN"),
        "{reference}"
    );
    let slices = message(catch_unwind(AssertUnwindSafe(|| {
        assert_close_slices(&[f32::INFINITY], &[1.0], f32::MAX, "embedding");
    })));
    assert!(slices.contains("actual[0] is inf"), "{slices}");
    // And a finite difference over the tolerance still fails.
    let over = message(catch_unwind(AssertUnwindSafe(|| {
        assert_close(&clean, &(&clean + 1e-3).unwrap(), 1e-4, "shifted");
    })));
    assert!(over.contains("exceeds"), "{over}");
}
