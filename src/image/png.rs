//! PNG output with text chunks: `parameters` (A1111 infotext; tEXt when Latin-1, else iTXt, as PIL
//! writes it) and `stipple` (the whole job as JSON, iTXt). [`save_png`] is atomic and never overwrites.
//!
//! [`read_text_chunks`] reads every text chunk back, whichever tool wrote the file
//! ([`read_text_chunks_from`]: the same over bytes in memory).

use crate::job::RgbImage;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PngError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {path}: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("cannot read {path} as PNG: {message}")]
    Decode { path: PathBuf, message: String },
}

/// Where an image went.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedImage {
    pub path: PathBuf,
}

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) <= 0xff)
}

fn encode(
    out: impl Write,
    image: &RgbImage,
    chunks: &[(&str, &str)],
) -> Result<(), png::EncodingError> {
    let mut enc = png::Encoder::new(out, image.width, image.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    for (key, text) in chunks {
        if is_latin1(text) {
            enc.add_text_chunk(key.to_string(), text.to_string())?;
        } else {
            enc.add_itxt_chunk(key.to_string(), text.to_string())?;
        }
    }
    let mut w = enc.write_header()?;
    w.write_image_data(&image.pixels)?;
    w.finish()
}

/// The next free `NNNNN-SEED.png` number in `dir` (A1111's naming), one past the highest in use.
fn next_number(dir: &Path) -> u32 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            let digits: String = name.chars().take_while(|c| c.is_ascii_digit()).collect();
            (digits.len() == 5)
                .then(|| digits.parse::<u32>().ok())
                .flatten()
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// Writes `image` into `dir` as `NNNNN-SEED.png` with the `parameters` and `stipple` chunks.
///
/// The data goes to a hidden temporary file first and is linked into place only when complete; an
/// existing file is never replaced (a name taken meanwhile moves on to the next number).
pub fn save_png(
    dir: &Path,
    image: &RgbImage,
    seed: u64,
    parameters: &str,
    stipple_json: &str,
) -> Result<SavedImage, PngError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PngError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".stipple-{}-{seed}.png.tmp", std::process::id()));
    {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut w = BufWriter::new(file);
        encode(
            &mut w,
            image,
            &[("parameters", parameters), ("stipple", stipple_json)],
        )
        .map_err(|e| PngError::Encode {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        let file = w.into_inner().map_err(|e| PngError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&tmp))?;
    }
    let mut n = next_number(dir);
    let result = loop {
        let path = dir.join(format!("{n:05}-{seed}.png"));
        match fs::hard_link(&tmp, &path) {
            Ok(()) => break Ok(SavedImage { path }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => break Err(PngError::Io { path, source: e }),
        }
    };
    let _ = fs::remove_file(&tmp);
    result
}

/// Every tEXt, zTXt and iTXt chunk of a PNG file, by keyword.
pub fn read_text_chunks(path: &Path) -> Result<BTreeMap<String, String>, PngError> {
    let file = File::open(path).map_err(|source| PngError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_text_chunks_from(BufReader::new(file), path)
}

/// [`read_text_chunks`] over any reader (`path` only names it in errors): a user's PNG is
/// untrusted input, and the fuzz target feeds this bytes without a file.
pub fn read_text_chunks_from(
    source: impl BufRead + Seek,
    path: &Path,
) -> Result<BTreeMap<String, String>, PngError> {
    let err = |message: String| PngError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = png::Decoder::new(source)
        .read_info()
        .map_err(|e| err(e.to_string()))?;
    // Chunks after the image data appear only once `finish` has read on to IEND; it skips the
    // pixels, so a header claiming a huge image costs nothing (decoding them into a buffer of the
    // claimed size aborted on 264 bytes saying 64 × 838860864). A file cut short still gives the
    // chunks before the cut.
    let _ = reader.finish();
    let info = reader.info();
    let mut out = BTreeMap::new();
    for c in &info.uncompressed_latin1_text {
        out.insert(c.keyword.clone(), c.text.clone());
    }
    for c in &info.compressed_latin1_text {
        let mut c = c.clone();
        c.decompress_text().map_err(|e| err(e.to_string()))?;
        out.insert(
            c.keyword.clone(),
            c.get_text().map_err(|e| err(e.to_string()))?,
        );
    }
    for c in &info.utf8_text {
        let mut c = c.clone();
        c.decompress_text().map_err(|e| err(e.to_string()))?;
        out.insert(
            c.keyword.clone(),
            c.get_text().map_err(|e| err(e.to_string()))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> RgbImage {
        RgbImage {
            width: 2,
            height: 1,
            pixels: vec![255, 0, 0, 0, 0, 255],
        }
    }

    /// Found by the `png_text` fuzz target: a header saying 64 × 838860864 pixels made the reader
    /// allocate the 54 GB image, and the process abort. (The fuzzer's input has bad CRCs, which png
    /// checks only outside fuzzing builds, so the file is made here; fuzz/corpus/png_text/
    /// regress-huge-image.png is the same file written by Python.)
    #[test]
    fn a_huge_claimed_image_is_not_decoded() {
        fn chunk(kind: &[u8], body: &[u8]) -> Vec<u8> {
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(body);
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(kind);
            out.extend_from_slice(body);
            out.extend_from_slice(&crc.sum().to_be_bytes());
            out
        }
        let mut ihdr = 64u32.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&838_860_864u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&[0; 65]).unwrap();
        let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
        file.extend(chunk(b"IHDR", &ihdr));
        file.extend(chunk(b"IDAT", &z.finish().unwrap()));
        file.extend(chunk(b"tEXt", b"parameters\0x\nSteps: 1"));
        file.extend(chunk(b"IEND", b""));
        let got = read_text_chunks_from(std::io::Cursor::new(&file), Path::new("huge.png"));
        assert_eq!(got.unwrap()["parameters"], "x\nSteps: 1");
    }

    #[test]
    fn chunks_round_trip_and_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let a = save_png(dir.path(), &img(), 7, "a fox\nSteps: 4", "{\"k\":1}").unwrap();
        let b = save_png(dir.path(), &img(), 7, "日本語 fox\nSteps: 4", "{}").unwrap();
        assert_ne!(a.path, b.path);
        assert!(a.path.ends_with("00000-7.png"), "{:?}", a.path);
        assert!(b.path.ends_with("00001-7.png"), "{:?}", b.path);
        let ta = read_text_chunks(&a.path).unwrap();
        assert_eq!(ta["parameters"], "a fox\nSteps: 4");
        assert_eq!(ta["stipple"], "{\"k\":1}");
        let tb = read_text_chunks(&b.path).unwrap();
        assert_eq!(tb["parameters"], "日本語 fox\nSteps: 4");
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
