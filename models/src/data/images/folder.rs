//! The Kaggle `chest_xray` layout: `{root}/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg|jpg|png`,
//! images of any size, colour or grey; converted to grey, resized, scaled to [0, 1].

use std::path::{Path, PathBuf};

use super::{ImageSet, LoadReport};
use crate::error::{ModelError, Result};

pub const CLASSES: [(&str, bool); 2] = [("NORMAL", false), ("PNEUMONIA", true)];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpeg" | "jpg" | "png"))
}

/// Largest accepted image side and decoding allocation: a header that
/// claims more is refused before any pixel is allocated.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

fn decode(path: &Path, size: usize) -> std::result::Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode_bytes(&bytes, size)
}

/// One JPEG or PNG file's bytes, grey, resized to `size`, in [0, 1].
pub fn decode_bytes(bytes: &[u8], size: usize) -> std::result::Result<Vec<f32>, String> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    let grey = img.to_luma8();
    let resized = image::imageops::resize(
        &grey,
        size as u32,
        size as u32,
        image::imageops::FilterType::Triangle,
    );
    Ok(resized
        .into_raw()
        .into_iter()
        .map(|v| f32::from(v) / 255.0)
        .collect())
}

/// Load split `split` of the folder at `root`, resized to `size`. Unreadable
/// images are skipped and reported by file name; a missing folder or a class
/// without readable images is an error.
pub fn load(root: &Path, split: &str, size: usize) -> Result<(ImageSet, LoadReport)> {
    let split_dir = root.join(split);
    if !split_dir.is_dir() {
        return Err(ModelError::Data(format!(
            "no folder {} (expected {{train,val,test}}/{{NORMAL,PNEUMONIA}})",
            split_dir.display()
        )));
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut report = LoadReport::default();
    for (class, label) in CLASSES {
        let dir = split_dir.join(class);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| ModelError::Data(format!("cannot read class folder {}: {e}", dir.display())))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        // Sorted: the order (and so every seeded split) does not depend on the filesystem.
        files.sort();
        let mut read = 0;
        for file in files {
            match decode(&file, size) {
                Ok(px) => {
                    pixels.extend(px);
                    labels.push(label);
                    read += 1;
                }
                Err(reason) => report.skipped.push((file.display().to_string(), reason)),
            }
        }
        if read == 0 {
            return Err(ModelError::Data(format!(
                "class folder {} has no readable images",
                dir.display()
            )));
        }
    }
    report.loaded = labels.len();
    Ok((ImageSet::new(size, pixels, labels)?, report))
}

/// Write `set` as PNG files under `{root}/{split}/{NORMAL,PNEUMONIA}/`, each
/// named `{prefix}{index}.png`.
pub fn write(root: &Path, split: &str, set: &ImageSet, prefix: &str) -> Result<()> {
    for (class, _) in CLASSES {
        let dir = root.join(split).join(class);
        std::fs::create_dir_all(&dir).map_err(|source| ModelError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    for i in 0..set.len() {
        let class = if set.labels[i] { "PNEUMONIA" } else { "NORMAL" };
        let path = root.join(split).join(class).join(format!("{prefix}{i:05}.png"));
        let bytes: Vec<u8> = set
            .image(i)
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        image::GrayImage::from_raw(set.size as u32, set.size as u32, bytes)
            .expect("buffer length matches the size")
            .save(&path)
            .map_err(|e| ModelError::Data(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_rgb_jpeg(path: &Path, w: u32, h: u32, value: u8) {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([value, value, value]));
        img.save(path).unwrap();
    }

    #[test]
    fn loads_any_size_colour_or_grey_and_skips_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for class in ["NORMAL", "PNEUMONIA"] {
            std::fs::create_dir_all(root.join("train").join(class)).unwrap();
        }
        write_rgb_jpeg(&root.join("train/NORMAL/a.jpeg"), 120, 90, 40);
        image::GrayImage::from_pixel(17, 33, image::Luma([200]))
            .save(root.join("train/NORMAL/b.png"))
            .unwrap();
        write_rgb_jpeg(&root.join("train/PNEUMONIA/c.jpg"), 64, 64, 220);
        std::fs::write(
            root.join("train/PNEUMONIA/broken.jpeg"),
            b"\xff\xd8\xff\xe0 not really a jpeg",
        )
        .unwrap();
        std::fs::write(root.join("train/PNEUMONIA/notes.txt"), b"ignored").unwrap();
        let (set, report) = load(root, "train", 32).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.labels, vec![false, false, true]);
        assert_eq!(report.loaded, 3);
        assert_eq!(report.skipped.len(), 1);
        assert!(report.skipped[0].0.ends_with("broken.jpeg"));
        // Grey level survives conversion and resizing (JPEG is lossy: small tolerance).
        assert!(set.image(0).iter().all(|v| (v - 40.0 / 255.0).abs() < 0.03));
        assert!(set.image(1).iter().all(|v| (v - 200.0 / 255.0).abs() < 1e-6));
    }

    #[test]
    fn missing_folders_and_empty_classes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path(), "train", 8).unwrap_err().to_string();
        assert!(e.contains("no folder"), "{e}");
        std::fs::create_dir_all(dir.path().join("train/NORMAL")).unwrap();
        std::fs::create_dir_all(dir.path().join("train/PNEUMONIA")).unwrap();
        image::GrayImage::new(4, 4)
            .save(dir.path().join("train/NORMAL/x.png"))
            .unwrap();
        let e = load(dir.path(), "train", 8).unwrap_err().to_string();
        assert!(e.contains("PNEUMONIA has no readable images"), "{e}");
    }

    #[test]
    fn written_sets_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let set = ImageSet::new(
            4,
            (0..48).map(|i| i as f32 / 47.0).collect(),
            vec![true, false, true],
        )
        .unwrap();
        write(dir.path(), "test", &set, "synthetic_").unwrap();
        let (back, _) = load(dir.path(), "test", 4).unwrap();
        // Files sort NORMAL first, then PNEUMONIA.
        assert_eq!(back.labels, vec![false, true, true]);
        assert_eq!(
            back.image(0),
            set.image(1)
                .iter()
                .map(|v| (v * 255.0).round() / 255.0)
                .collect::<Vec<_>>()
                .as_slice()
        );
    }
}
