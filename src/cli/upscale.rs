//! `stipple upscale`: a picture through an ONNX image upscaler ([`crate::image::upscale`]), in
//! tiles, written as a PNG.

use super::error::Classify;
use super::CliError;
use crate::image::upscale::{ModelUpscaler, DEFAULT_OVERLAP, DEFAULT_TILE};
use crate::runtime::{Runtime, SessionOptions};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct UpscaleArgs {
    /// The picture (PNG, JPEG, WebP)
    pub input: PathBuf,
    /// The ONNX image upscaler (e.g. a Real-ESRGAN export): one input [1, 3, H, W] in 0..1
    #[arg(long, value_name = "FILE.onnx")]
    pub upscaler: PathBuf,
    /// Where the PNG goes (default: next to the picture, NAME.upscaled.png)
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Tile side in input pixels (larger: faster, more memory)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TILE)]
    pub tile: usize,
    /// Overlap of neighbouring tiles in input pixels, blended
    #[arg(long, value_name = "N", default_value_t = DEFAULT_OVERLAP)]
    pub tile_overlap: usize,
}

/// Where the result goes when `--out` is not given.
fn default_out(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "picture".into());
    input.with_file_name(format!("{stem}.upscaled.png"))
}

pub fn run(a: &UpscaleArgs, ort_lib: Option<&Path>) -> Result<(), CliError> {
    if a.tile == 0 {
        return Err(CliError::Usage("--tile 0: a tile needs pixels".into()));
    }
    // Everything the user gave is read before ONNX Runtime loads.
    let picture = crate::image::init::read_picture(&a.input).failed()?;
    let rt = Runtime::get(ort_lib, false).failed()?;
    let mut up = ModelUpscaler::open(rt, &SessionOptions::default(), &a.upscaler).failed()?;
    let started = std::time::Instant::now();
    let img = up
        .upscale(&picture.rgb, a.tile, a.tile_overlap)
        .map_err(|e| match e {
            crate::image::upscale::UpscaleError::Tiling { .. } => CliError::Usage(e.to_string()),
            e => CliError::Failed(e.to_string()),
        })?;
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.input));
    image::save_buffer(
        &out,
        &img.pixels,
        img.width,
        img.height,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", out.display())))?;
    println!(
        "{} ({}x{}, {}× in {:.1} s)",
        out.display(),
        img.width,
        img.height,
        up.scale(),
        started.elapsed().as_secs_f32()
    );
    Ok(())
}
