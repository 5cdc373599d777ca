//! Pooling token states `[rows, len, hidden]` into one vector per row, and L2
//! normalisation, as sentence-transformers computes them.

/// Mean of each row's token states over the positions its attention mask keeps.
/// A row whose mask keeps nothing pools to zeros (the divisor is clamped, as
/// sentence-transformers clamps it to 1e-9).
pub fn mean(states: &[f32], mask: &[i64], rows: usize, len: usize, hidden: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * hidden];
    for r in 0..rows {
        let acc = &mut out[r * hidden..(r + 1) * hidden];
        let mut kept = 0f32;
        for t in 0..len {
            if mask[r * len + t] == 0 {
                continue;
            }
            kept += 1.0;
            let state = &states[(r * len + t) * hidden..(r * len + t + 1) * hidden];
            for (a, s) in acc.iter_mut().zip(state) {
                *a += s;
            }
        }
        let divisor = kept.max(1e-9);
        for a in acc.iter_mut() {
            *a /= divisor;
        }
    }
    out
}

/// Each row's first token state (`[CLS]`).
pub fn cls(states: &[f32], rows: usize, len: usize, hidden: usize) -> Vec<f32> {
    (0..rows).flat_map(|r| states[r * len * hidden..r * len * hidden + hidden].iter().copied()).collect()
}

/// Scales each row of `values` (`hidden` wide) to unit L2 norm; a zero row stays zero.
pub fn l2_normalize(values: &mut [f32], hidden: usize) {
    if hidden == 0 {
        return;
    }
    for row in values.chunks_mut(hidden) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        for v in row.iter_mut() {
            *v /= norm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mean_skips_masked_tokens() {
        // two rows, three tokens, hidden 2; row 1 has one padding token
        #[rustfmt::skip]
        let states = [
            1.0, 2.0,  3.0, 4.0,  5.0, 6.0,
            2.0, 0.0,  4.0, 2.0,  100.0, -100.0,
        ];
        let mask = [1, 1, 1, 1, 1, 0];
        assert_eq!(mean(&states, &mask, 2, 3, 2), vec![3.0, 4.0, 3.0, 1.0]);
    }

    #[test]
    fn fully_masked_row_pools_to_zeros() {
        assert_eq!(mean(&[7.0, 8.0], &[0], 1, 1, 2), vec![0.0, 0.0]);
    }

    #[test]
    fn cls_takes_the_first_token() {
        let states = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(cls(&states, 2, 2, 2), vec![1.0, 2.0, 5.0, 6.0]);
    }

    #[test]
    fn normalises_rows_and_keeps_zero_rows() {
        let mut v = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize(&mut v, 2);
        assert_eq!(v, vec![0.6, 0.8, 0.0, 0.0]);
    }

    proptest! {
        #[test]
        fn padding_does_not_change_the_mean(
            tokens in prop::collection::vec(prop::collection::vec(-10f32..10.0, 3), 1..6),
            pad in 0usize..4,
            junk in -1e3f32..1e3,
        ) {
            let len = tokens.len();
            let alone = mean(&tokens.concat(), &vec![1; len], 1, len, 3);
            let mut padded = tokens.concat();
            padded.extend(std::iter::repeat_n(junk, pad * 3));
            let mut mask = vec![1; len];
            mask.extend(std::iter::repeat_n(0, pad));
            let with_pad = mean(&padded, &mask, 1, len + pad, 3);
            prop_assert_eq!(alone, with_pad);
        }

        #[test]
        fn normalised_rows_have_unit_norm(row in prop::collection::vec(-100f32..100.0, 1..16)) {
            let mut v = row.clone();
            l2_normalize(&mut v, row.len());
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            prop_assert!(row.iter().all(|x| x.abs() < 1e-6) || (norm - 1.0).abs() < 1e-5, "norm {}", norm);
        }
    }
}
