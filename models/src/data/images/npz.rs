//! MedMNIST `.npz` files: a zip of `.npy` arrays named `{split}_images`
//! (uint8, [N, H, W] or [N, H, W, C]) and `{split}_labels` (uint8, [N, 1] or
//! [N]); label 1 is pneumonia. Any MedMNIST+ size is resized on load.

use std::io::{Read, Write};
use std::path::Path;

use super::npy::{self, U8Array};
use super::{resize_grey, ImageSet, LoadReport};
use crate::error::{ModelError, Result};

/// Largest array accepted from an archive (MedMNIST+'s largest split at
/// 224 px is about 1.5 GB).
pub const MAX_ARRAY_BYTES: u64 = 2 << 30;

fn err(path: &Path, message: String) -> ModelError {
    ModelError::Data(format!("{}: {message}", path.display()))
}

/// Load split `split` ("train", "val" or "test") resized to `size`.
pub fn load(path: &Path, split: &str, size: usize) -> Result<(ImageSet, LoadReport)> {
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    read(file, path, split, size)
}

/// The same from any seekable bytes (`path` names them in errors).
pub fn read(
    reader: impl std::io::Read + std::io::Seek,
    path: &Path,
    split: &str,
    size: usize,
) -> Result<(ImageSet, LoadReport)> {
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|e| err(path, format!("not a .npz (zip) file: {e}")))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.trim_end_matches(".npy").to_string()))
        .collect();
    let mut read = |key: &str| -> Result<U8Array> {
        let mut entry = archive
            .by_name(&format!("{key}.npy"))
            .map_err(|_| err(path, format!("no array '{key}' (arrays: {})", names.join(", "))))?;
        // The declared size is checked and enforced (a zip bomb stops there).
        if entry.size() > MAX_ARRAY_BYTES {
            return Err(err(
                path,
                format!(
                    "'{key}' unpacks to {} bytes, more than {MAX_ARRAY_BYTES}",
                    entry.size()
                ),
            ));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_ARRAY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(path, format!("cannot read '{key}': {e}")))?;
        if bytes.len() as u64 > MAX_ARRAY_BYTES {
            return Err(err(
                path,
                format!("'{key}' unpacks to more than {MAX_ARRAY_BYTES} bytes"),
            ));
        }
        npy::parse(&bytes, key)
    };
    let images = read(&format!("{split}_images"))?;
    let labels = read(&format!("{split}_labels"))?;
    let (n, h, w, c) = match images.shape[..] {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, c] => (n, h, w, c),
        _ => {
            return Err(err(
                path,
                format!(
                    "{split}_images has shape {:?}; expected [N, H, W(, C)]",
                    images.shape
                ),
            ))
        }
    };
    // Every dimension at least 1 (then the data's length bounds them all)
    // and grey, RGB or RGBA pixels.
    if h == 0 || w == 0 || !(1..=4).contains(&c) {
        return Err(err(
            path,
            format!(
                "{split}_images has shape {:?}; expected H, W >= 1 and 1 to 4 channels",
                images.shape
            ),
        ));
    }
    let label_count = labels.shape.first().copied().unwrap_or(0);
    if label_count != n || labels.data.len() != n {
        return Err(err(
            path,
            format!("{n} images but {split}_labels has shape {:?}", labels.shape),
        ));
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l > 1) {
        return Err(err(
            path,
            format!("{split}_labels holds {bad}; binary labels 0/1 are expected"),
        ));
    }
    if n == 0 {
        return Err(err(path, format!("{split} split is empty")));
    }
    let mut pixels = Vec::with_capacity(n * size * size);
    for i in 0..n {
        let raw = &images.data[i * h * w * c..(i + 1) * h * w * c];
        // Colour images become grey by averaging their channels.
        let grey: Vec<f32> = raw
            .chunks_exact(c)
            .map(|px| px.iter().map(|&v| f32::from(v)).sum::<f32>() / (255.0 * c as f32))
            .collect();
        pixels.extend(resize_grey(&grey, w, h, size));
    }
    let set = ImageSet::new(size, pixels, labels.data.iter().map(|&l| l == 1).collect())?;
    let balance = set.balance();
    if balance.normal == 0 || balance.pneumonia == 0 {
        return Err(err(
            path,
            format!("{split} split has an empty class ({balance:?})"),
        ));
    }
    Ok((
        set,
        LoadReport {
            loaded: n,
            skipped: Vec::new(),
        },
    ))
}

/// Write `sets` as `{split}_images` / `{split}_labels` arrays (uint8) in the
/// MedMNIST layout, plus a `synthetic` marker array when `synthetic` is set.
pub fn write(path: &Path, sets: &[(&str, &ImageSet)], synthetic: bool) -> Result<()> {
    let io = |e: std::io::Error| ModelError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut put = |name: &str, array: U8Array| -> Result<()> {
        zip.start_file(format!("{name}.npy"), options)
            .map_err(|e| err(path, e.to_string()))?;
        zip.write_all(&npy::write(&array)).map_err(io)
    };
    for (split, set) in sets {
        put(
            &format!("{split}_images"),
            U8Array {
                shape: vec![set.len(), set.size, set.size],
                data: set
                    .pixels
                    .iter()
                    .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect(),
            },
        )?;
        put(
            &format!("{split}_labels"),
            U8Array {
                shape: vec![set.len(), 1],
                data: set.labels.iter().map(|&l| u8::from(l)).collect(),
            },
        )?;
    }
    if synthetic {
        put(
            "synthetic",
            U8Array {
                shape: vec![1],
                data: vec![1],
            },
        )?;
    }
    zip.finish().map_err(|e| err(path, e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(size: usize, labels: Vec<bool>) -> ImageSet {
        let n = labels.len();
        let pixels = (0..n * size * size).map(|i| (i % 7) as f32 / 7.0).collect();
        ImageSet::new(size, pixels, labels).unwrap()
    }

    #[test]
    fn empty_dimensions_and_odd_channel_counts_are_errors_not_panics() {
        // Read while writing the fuzz targets: 0 channels reached
        // `chunks_exact(0)` (a panic), and 0-sized images a huge reservation.
        let dir = tempfile::tempdir().unwrap();
        for shape in [vec![2, 8, 8, 0], vec![2, 0, 8], vec![2, 8, 8, 5]] {
            let path = dir.path().join("odd.npz");
            let file = std::fs::File::create(&path).unwrap();
            let mut zip = zip::ZipWriter::new(file);
            let options = zip::write::SimpleFileOptions::default();
            let count: usize = shape.iter().product();
            for (name, array) in [
                (
                    "train_images",
                    U8Array {
                        shape: shape.clone(),
                        data: vec![0; count],
                    },
                ),
                (
                    "train_labels",
                    U8Array {
                        shape: vec![2],
                        data: vec![0, 1],
                    },
                ),
            ] {
                zip.start_file(format!("{name}.npy"), options).unwrap();
                zip.write_all(&npy::write(&array)).unwrap();
            }
            zip.finish().unwrap();
            let e = load(&path, "train", 8).unwrap_err().to_string();
            assert!(e.contains("1 to 4 channels"), "{shape:?}: {e}");
        }
    }

    #[test]
    fn round_trip_resizes_and_keeps_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pneumoniamnist.npz");
        let train = set(28, vec![true, false, true]);
        write(
            &path,
            &[("train", &train), ("test", &set(28, vec![false, true]))],
            false,
        )
        .unwrap();
        let (loaded, report) = load(&path, "train", 28).unwrap();
        assert_eq!(report.loaded, 3);
        assert_eq!(loaded.labels, train.labels);
        for (a, b) in loaded.pixels.iter().zip(&train.pixels) {
            assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6);
        }
        let (big, _) = load(&path, "test", 64).unwrap();
        assert_eq!(big.size, 64);
        assert_eq!(big.pixels.len(), 2 * 64 * 64);
    }

    #[test]
    fn wrong_key_missing_split_and_garbage_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npz");
        write(&path, &[("train", &set(8, vec![true, false]))], false).unwrap();
        let e = load(&path, "val", 8).unwrap_err().to_string();
        assert!(
            e.contains("no array 'val_images'") && e.contains("train_images"),
            "{e}"
        );
        // An npz whose keys are not MedMNIST's.
        let other = dir.path().join("other.npz");
        {
            let mut zip = zip::ZipWriter::new(std::fs::File::create(&other).unwrap());
            zip.start_file("x_train.npy", zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(&npy::write(&U8Array {
                shape: vec![1],
                data: vec![0],
            }))
            .unwrap();
            zip.finish().unwrap();
        }
        let e = load(&other, "train", 8).unwrap_err().to_string();
        assert!(
            e.contains("no array 'train_images'") && e.contains("x_train"),
            "{e}"
        );
        let junk = dir.path().join("junk.npz");
        std::fs::write(&junk, b"not a zip").unwrap();
        assert!(load(&junk, "train", 8)
            .unwrap_err()
            .to_string()
            .contains("not a .npz"));
        let single = dir.path().join("single.npz");
        write(&single, &[("train", &set(8, vec![true, true]))], false).unwrap();
        assert!(load(&single, "train", 8)
            .unwrap_err()
            .to_string()
            .contains("empty class"));
    }
}
