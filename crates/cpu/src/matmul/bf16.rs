//! bfloat16 conversions for the matrix-product layer: widening a checkpoint's bf16 weight view
//! to `f32`, copying it densely, and rounding `f32` operands to bf16 precision (round to
//! nearest, ties to even, as oneDNN and PyTorch do) for the `gemm` implementation's emulated
//! bf16 products.

use super::{pack_row_major, MatRef};

/// The `f32` value of a bfloat16 bit pattern (exact: bf16 is the top half of an `f32`).
#[inline]
pub fn to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `x` rounded to the nearest bfloat16 (ties to even; NaN stays NaN), as bits.
#[inline]
pub fn from_f32(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// `x` rounded to bfloat16 precision, kept as `f32`.
#[inline]
pub fn round(x: f32) -> f32 {
    to_f32(from_f32(x))
}

/// Widens a (bounds-checked) bf16 view into dense row-major `f32`.
pub(crate) fn widen_row_major(src: &MatRef<'_, u16>) -> Vec<f32> {
    let mut bits = Vec::new();
    pack_row_major(src, &mut bits);
    bits.into_iter().map(to_f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties go to even (1 + 2^-6).
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round(1.0 + 1.0 / 128.0), 1.0 + 1.0 / 128.0);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(to_f32(from_f32(-2.5)), -2.5);
    }
}
