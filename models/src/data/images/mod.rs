//! Chest X-ray images: an in-memory set of grey images, loaders for the two
//! layouts users really have (the Kaggle `chest_xray` folder and MedMNIST
//! `.npz`), and a labelled synthetic generator for demos and tests.

pub mod folder;
pub mod npy;
pub mod npz;
pub mod synth;

use serde::Serialize;

use crate::error::{ModelError, Result};

/// Square grey images with values in [0, 1], row-major, and binary labels
/// (`true` = pneumonia).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub size: usize,
    pub pixels: Vec<f32>,
    pub labels: Vec<bool>,
}

impl ImageSet {
    pub fn new(size: usize, pixels: Vec<f32>, labels: Vec<bool>) -> Result<Self> {
        if size == 0 || pixels.len() != labels.len() * size * size {
            return Err(ModelError::Data(format!(
                "{} pixel values do not make {} images of {size}x{size}",
                pixels.len(),
                labels.len()
            )));
        }
        Ok(Self { size, pixels, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.size * self.size;
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.size * self.size);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            size: self.size,
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    pub fn balance(&self) -> ClassBalance {
        let pneumonia = self.labels.iter().filter(|&&l| l).count();
        ClassBalance {
            normal: self.len() - pneumonia,
            pneumonia,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClassBalance {
    pub normal: usize,
    pub pneumonia: usize,
}

/// What a loader read, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    pub loaded: usize,
    /// `(file, reason)` of every image that could not be read; it was skipped.
    pub skipped: Vec<(String, String)>,
}

/// Resize a grey image (values in [0, 1]) to `size` x `size` (bilinear).
pub fn resize_grey(pixels: &[f32], width: usize, height: usize, size: usize) -> Vec<f32> {
    if width == size && height == size {
        return pixels.to_vec();
    }
    let img = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(
        width as u32,
        height as u32,
        pixels.to_vec(),
    )
    .expect("buffer length matches the dimensions");
    image::imageops::resize(
        &img,
        size as u32,
        size as u32,
        image::imageops::FilterType::Triangle,
    )
    .into_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked_and_selection_copies_images() {
        assert!(ImageSet::new(2, vec![0.0; 7], vec![true, false]).is_err());
        let set = ImageSet::new(1, vec![0.1, 0.2, 0.3], vec![true, false, true]).unwrap();
        let sub = set.select(&[2, 1]);
        assert_eq!(sub.pixels, vec![0.3, 0.2]);
        assert_eq!(sub.labels, vec![true, false]);
        assert_eq!(
            set.balance(),
            ClassBalance {
                normal: 1,
                pneumonia: 2
            }
        );
    }

    #[test]
    fn resizing_keeps_a_constant_image_constant() {
        let out = resize_grey(&[0.5; 28 * 28], 28, 28, 64);
        assert_eq!(out.len(), 64 * 64);
        assert!(out.iter().all(|v| (v - 0.5).abs() < 1e-6));
    }
}
