//! Quantisation into the ring Z_(2^32): each coordinate is clipped to
//! [-r, r], shifted to [0, 2r] and scaled to [0, 2^bits - 1] with unbiased
//! stochastic rounding (E[q] = (x + r) * s exactly), so that the sum of N
//! inputs, below N * (2^bits - 1) < 2^32, never wraps and dequantises to
//! the sum of the clipped inputs plus zero-mean rounding error of variance
//! at most N / (4 s^2) per coordinate.

use rand::Rng;

use super::{Result, SecAggError};

/// How an input is weighted in the sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// FedAvg: the input is multiplied by `count / max_weight` (at most 1,
    /// so it stays in range) and the count travels masked as element 0, so
    /// the coordinator learns only the total count.
    Counted { count: u64, max_weight: u64 },
    /// Every input weighs 1 (differential privacy: a weight would multiply
    /// the sensitivity). Element 0 carries 1, so the unmasked element 0
    /// must equal the number of inputs: a check on the unmasking.
    Unweighted,
}

impl Weighting {
    fn factor(&self) -> Result<f64> {
        match *self {
            Weighting::Unweighted => Ok(1.0),
            Weighting::Counted { count, max_weight } => {
                if max_weight == 0 || count > max_weight {
                    return Err(SecAggError::Invalid(format!(
                        "this hospital's sample count {count} is above max_weight {max_weight}: raise \
                         secure_aggregation.max_weight to at least the largest hospital's count"
                    )));
                }
                Ok(count as f64 / max_weight as f64)
            }
        }
    }

    /// What element 0 carries.
    fn element0(&self) -> u32 {
        match *self {
            Weighting::Unweighted => 1,
            Weighting::Counted { count, .. } => count as u32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    range: f64,
    bits: u32,
}

impl Quantizer {
    pub fn new(range: f64, bits: u32) -> Result<Self> {
        if !(range.is_finite() && range > 0.0) {
            return Err(SecAggError::Invalid(format!(
                "clipping_range must be a positive number, got {range}"
            )));
        }
        if !(1..=31).contains(&bits) {
            return Err(SecAggError::Invalid(format!(
                "quantization_bits must be between 1 and 31, got {bits}"
            )));
        }
        Ok(Self { range, bits })
    }

    fn levels(&self) -> u64 {
        (1u64 << self.bits) - 1
    }

    /// Quantisation steps per unit.
    pub fn scale(&self) -> f64 {
        self.levels() as f64 / (2.0 * self.range)
    }

    pub fn range(&self) -> f64 {
        self.range
    }

    /// The most inputs whose sum fits the ring without wrapping.
    pub fn capacity(&self) -> usize {
        (u64::from(u32::MAX) / self.levels()) as usize
    }

    /// The ring vector of `values` (element 0 first, per `weighting`) and
    /// how many coordinates had to be clipped to the range (reported
    /// locally: a frequent clip means the range is too small).
    pub fn quantize(
        &self,
        values: &[f32],
        weighting: Weighting,
        rng: &mut impl Rng,
    ) -> Result<(Vec<u32>, usize)> {
        let factor = weighting.factor()?;
        let scale = self.scale();
        let top = self.levels() as f64;
        let mut clipped = 0;
        let mut out = Vec::with_capacity(values.len() + 1);
        out.push(weighting.element0());
        for &v in values {
            let v = f64::from(v);
            let x = if v.is_nan() {
                clipped += 1;
                0.0
            } else if v.abs() > self.range {
                clipped += 1;
                v.clamp(-self.range, self.range)
            } else {
                v
            };
            let level = ((x * factor + self.range) * scale).clamp(0.0, top);
            let floor = level.floor();
            let up = rng.random::<f64>() < level - floor;
            out.push((floor as u64 + u64::from(up)).min(self.levels()) as u32);
        }
        Ok((out, clipped))
    }

    /// The sum of `inputs` dequantised inputs from their ring sum (one coordinate).
    pub fn dequantize_sum(&self, sum: u32, inputs: usize) -> f64 {
        f64::from(sum) / self.scale() - inputs as f64 * self.range
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    #[test]
    fn rounding_is_unbiased_and_bounded() {
        let q = Quantizer::new(1.0, 8).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let x = 0.123_456_f32;
        let n = 20_000;
        let mut total = 0.0;
        for _ in 0..n {
            let (v, clipped) = q.quantize(&[x], Weighting::Unweighted, &mut rng).unwrap();
            assert_eq!((v[0], clipped), (1, 0));
            total += q.dequantize_sum(v[1], 1);
        }
        let mean = total / n as f64;
        // One step is 2/255 ~ 0.0078; the mean of 20k roundings is within a few 1e-4.
        assert!((mean - f64::from(x)).abs() < 5e-4, "mean {mean}");
    }

    #[test]
    fn sums_dequantise_without_wrapping_at_capacity() {
        let q = Quantizer::new(2.0, 22).unwrap();
        assert_eq!(q.capacity(), 1024);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (top, _) = q.quantize(&[2.0], Weighting::Unweighted, &mut rng).unwrap();
        let sum = (0..q.capacity()).fold(0u32, |acc, _| acc.wrapping_add(top[1]));
        assert!((q.dequantize_sum(sum, q.capacity()) - 2.0 * q.capacity() as f64).abs() < 1e-6);
    }

    #[test]
    fn out_of_range_values_are_clipped_and_counted() {
        let q = Quantizer::new(1.0, 16).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (v, clipped) = q
            .quantize(&[5.0, -5.0, f32::NAN, 0.5], Weighting::Unweighted, &mut rng)
            .unwrap();
        assert_eq!(clipped, 3);
        assert_eq!(q.dequantize_sum(v[1], 1), 1.0);
        assert_eq!(q.dequantize_sum(v[2], 1), -1.0);
        assert!(q.dequantize_sum(v[3], 1).abs() < 1e-4);
    }

    #[test]
    fn counted_inputs_are_scaled_and_a_count_above_max_weight_is_refused() {
        let q = Quantizer::new(1.0, 20).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let w = Weighting::Counted {
            count: 25,
            max_weight: 100,
        };
        let (v, _) = q.quantize(&[0.8], w, &mut rng).unwrap();
        assert_eq!(v[0], 25);
        assert!((q.dequantize_sum(v[1], 1) - 0.2).abs() < 1e-5);
        let over = Weighting::Counted {
            count: 101,
            max_weight: 100,
        };
        let err = q.quantize(&[0.8], over, &mut rng).unwrap_err().to_string();
        assert!(err.contains("max_weight"), "{err}");
        assert!(Quantizer::new(0.0, 8).is_err() && Quantizer::new(1.0, 32).is_err());
    }
}
