//! SYNTHETIC chest-X-ray-like images for demos and tests — not patient data.
//!
//! Each image has a thorax, two dark lung fields, ribs, a spine, faint
//! vessel markings, global exposure jitter and noise. Pneumonia images add
//! one to three diffuse opacities inside a lung, of varying size, position
//! and (sometimes low) contrast: learnable, but not trivially.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::ImageSet;
use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthSpec {
    pub count: usize,
    pub size: usize,
    pub seed: u64,
    /// Share of pneumonia images.
    pub pneumonia_share: f64,
}

/// A smooth inside-ellipse weight in [0, 1].
fn ellipse(x: f64, y: f64, cx: f64, cy: f64, rx: f64, ry: f64, edge: f64) -> f64 {
    let d = ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2);
    (1.0 - (d - 1.0) / edge).clamp(0.0, 1.0).min(1.0) * f64::from(u8::from(d < 1.0 + edge))
}

struct Blob {
    cx: f64,
    cy: f64,
    r: f64,
    contrast: f64,
}

fn one_image(rng: &mut ChaCha8Rng, size: usize, pneumonia: bool, out: &mut Vec<f32>) {
    let jitter = |rng: &mut ChaCha8Rng, s: f64| (rng.random::<f64>() - 0.5) * 2.0 * s;
    let lungs = [
        (
            0.5 - 0.17 + jitter(rng, 0.02),
            0.48 + jitter(rng, 0.03),
            0.12 + jitter(rng, 0.015),
            0.27 + jitter(rng, 0.03),
        ),
        (
            0.5 + 0.17 + jitter(rng, 0.02),
            0.48 + jitter(rng, 0.03),
            0.12 + jitter(rng, 0.015),
            0.27 + jitter(rng, 0.03),
        ),
    ];
    let rib_period = 0.085 + jitter(rng, 0.01);
    let rib_phase = rng.random::<f64>();
    let gain = 1.0 + jitter(rng, 0.15);
    let offset = jitter(rng, 0.05);
    let mut blobs = Vec::new();
    // Vessel markings in every image.
    for _ in 0..rng.random_range(1..=4) {
        let (cx, cy, rx, ry) = lungs[rng.random_range(0..2)];
        blobs.push(Blob {
            cx: cx + jitter(rng, rx * 0.7),
            cy: cy + jitter(rng, ry * 0.7),
            r: 0.015 + rng.random::<f64>() * 0.025,
            contrast: 0.03 + rng.random::<f64>() * 0.05,
        });
    }
    if pneumonia {
        for _ in 0..rng.random_range(1..=3) {
            let (cx, cy, rx, ry) = lungs[rng.random_range(0..2)];
            blobs.push(Blob {
                cx: cx + jitter(rng, rx * 0.6),
                cy: cy + jitter(rng, ry * 0.6),
                r: 0.06 + rng.random::<f64>() * 0.10,
                contrast: 0.15 + rng.random::<f64>() * 0.25,
            });
        }
    }
    for py in 0..size {
        for px in 0..size {
            let (x, y) = ((px as f64 + 0.5) / size as f64, (py as f64 + 0.5) / size as f64);
            let body = ellipse(x, y, 0.5, 0.55, 0.44, 0.47, 0.08);
            let mut v = 0.08 + 0.05 * y + 0.35 * body;
            let lung = lungs
                .iter()
                .map(|&(cx, cy, rx, ry)| ellipse(x, y, cx, cy, rx, ry, 0.15))
                .fold(0.0, f64::max);
            v -= 0.25 * lung;
            let rib_y = (y + 0.15 * (x - 0.5).powi(2)) / rib_period + rib_phase;
            v += 0.12 * body * ((2.0 * std::f64::consts::PI * rib_y).cos().max(0.0)).powi(6);
            v += 0.2 * body * (-((x - 0.5) / 0.04).powi(2)).exp();
            for b in &blobs {
                let d2 = (x - b.cx).powi(2) + (y - b.cy).powi(2);
                v += lung * b.contrast * (-d2 / (2.0 * b.r * b.r)).exp();
            }
            let noise: f64 = rng.sample(StandardNormal);
            v = gain * v + offset + 0.03 * noise;
            out.push(v.clamp(0.0, 1.0) as f32);
        }
    }
}

/// Generate `spec.count` labelled SYNTHETIC images.
pub fn generate(spec: &SynthSpec) -> Result<ImageSet> {
    if spec.count == 0 || !(8..=1024).contains(&spec.size) {
        return Err(ModelError::Invalid(format!(
            "synthetic images need a count of at least 1 and a size of 8..=1024 (got {} and {})",
            spec.count, spec.size
        )));
    }
    if !(spec.pneumonia_share > 0.0 && spec.pneumonia_share < 1.0) {
        return Err(ModelError::Invalid(format!(
            "pneumonia share must be in (0, 1), got {}",
            spec.pneumonia_share
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut pixels = Vec::with_capacity(spec.count * spec.size * spec.size);
    let mut labels = Vec::with_capacity(spec.count);
    for _ in 0..spec.count {
        let pneumonia = rng.random::<f64>() < spec.pneumonia_share;
        one_image(&mut rng, spec.size, pneumonia, &mut pixels);
        labels.push(pneumonia);
    }
    ImageSet::new(spec.size, pixels, labels)
}

/// Split into train / val / test (70% / 15% / 15%) in generation order.
pub fn split(set: &ImageSet) -> [(&'static str, ImageSet); 3] {
    let n = set.len();
    let (a, b) = (n * 70 / 100, n * 85 / 100);
    let range = |lo: usize, hi: usize| set.select(&(lo..hi).collect::<Vec<_>>());
    [
        ("train", range(0, a)),
        ("val", range(a, b)),
        ("test", range(b, n)),
    ]
}

/// Write split parts as a MedMNIST-style `.npz` marked SYNTHETIC (it holds
/// a `synthetic` array), the one way generated images are saved as npz.
pub fn write_npz(path: &std::path::Path, parts: &[(&str, ImageSet)]) -> Result<()> {
    let refs: Vec<(&str, &ImageSet)> = parts.iter().map(|(name, part)| (*name, part)).collect();
    super::npz::write(path, &refs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SynthSpec {
        SynthSpec {
            count: 200,
            size: 32,
            seed: 3,
            pneumonia_share: 0.5,
        }
    }

    #[test]
    fn seeded_balanced_and_in_range() {
        let a = generate(&spec()).unwrap();
        assert_eq!(a, generate(&spec()).unwrap());
        assert_ne!(a, generate(&SynthSpec { seed: 4, ..spec() }).unwrap());
        let b = a.balance();
        assert!(b.pneumonia > 70 && b.normal > 70, "{b:?}");
        assert!(a.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(generate(&SynthSpec { size: 4, ..spec() }).is_err());
    }

    /// Pneumonia images are brighter inside the lungs on average, yet the
    /// classes overlap: a single-pixel-statistic rule does not separate them.
    #[test]
    fn learnable_but_not_trivial() {
        let set = generate(&SynthSpec { count: 400, ..spec() }).unwrap();
        let lung_mean = |i: usize| {
            let img = set.image(i);
            let s = set.size;
            let mut sum = 0.0;
            let mut n = 0.0;
            for y in s * 3 / 10..s * 7 / 10 {
                for x in (s * 2 / 10..s * 4 / 10).chain(s * 6 / 10..s * 8 / 10) {
                    sum += img[y * s + x];
                    n += 1.0;
                }
            }
            sum / n
        };
        let (mut p, mut q): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
        for i in 0..set.len() {
            if set.labels[i] {
                p.push(lung_mean(i));
            } else {
                q.push(lung_mean(i));
            }
        }
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean(&p) > mean(&q));
        // Best threshold on that statistic still misclassifies a good share.
        let mut best = 0.0f32;
        for t in (0..100).map(|t| t as f32 / 100.0) {
            let correct = p.iter().filter(|&&v| v > t).count() + q.iter().filter(|&&v| v <= t).count();
            best = best.max(correct as f32 / set.len() as f32);
        }
        assert!(best < 0.9, "too easy: {best}");
    }
}
