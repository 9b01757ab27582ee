//! Image upscaler models (Real-ESRGAN and the like, exported to ONNX): [`ModelUpscaler::open`]
//! checks the graph (one `[1, 3, H, W]` input and output in 0..1) and reads its scale from the
//! output/input shape ratio; [`ModelUpscaler::upscale`] runs it over overlapping tiles, so a 4×
//! model on a large picture needs the memory of one tile, and blends the tiles where they overlap.

use crate::job::RgbImage;
use crate::runtime::tensor_io::{run, Input};
use crate::runtime::{Runtime, SessionOptions};
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use std::path::{Path, PathBuf};

/// Default tile side and overlap in input pixels.
pub const DEFAULT_TILE: usize = 192;
pub const DEFAULT_OVERLAP: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum UpscaleError {
    #[error("upscaler {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("upscaler {path}: {message}; an image upscaler takes one float tensor [1, 3, H, W] (RGB in 0..1) and gives one [1, 3, s·H, s·W]")]
    Shape { path: PathBuf, message: String },
    #[error("upscaler {path}: running it failed: {message}")]
    Run { path: PathBuf, message: String },
    #[error("--tile {tile} with --tile-overlap {overlap}: the tile must be larger than twice the overlap")]
    Tiling { tile: usize, overlap: usize },
}

/// An opened upscaler model.
pub struct ModelUpscaler {
    path: PathBuf,
    session: Session,
    input: String,
    output: String,
    /// Fixed input height and width of graphs exported with static shapes.
    fixed: Option<(usize, usize)>,
    scale: usize,
}

/// The dims of a `[1, 3, H, W]` float outlet (negative = free), or why it is not one.
fn image_dims(ty: &ValueType) -> Result<Vec<i64>, String> {
    match ty {
        ValueType::Tensor {
            ty: TensorElementType::Float32 | TensorElementType::Float16,
            shape,
            ..
        } => {
            let dims: Vec<i64> = shape.iter().copied().collect();
            let ok = dims.len() == 4 && dims[1] <= 3 && (dims[1] == 3 || dims[1] < 0);
            if ok {
                Ok(dims)
            } else {
                Err(format!("shape {dims:?}"))
            }
        }
        other => Err(format!("type {other:?}")),
    }
}

impl ModelUpscaler {
    /// Opens `path` on the device of `opts` and finds its scale (a probe run when the graph's
    /// shapes are free).
    pub fn open(
        rt: &Runtime,
        opts: &SessionOptions,
        path: &Path,
    ) -> Result<ModelUpscaler, UpscaleError> {
        let open = |message: String| UpscaleError::Open {
            path: path.to_path_buf(),
            message,
        };
        let shape = |message: String| UpscaleError::Shape {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(open("no such file".into()));
        }
        let providers = opts
            .device
            .dispatch(&rt.path.display().to_string(), &opts.cuda)
            .map_err(|e| open(e.to_string()))?;
        let session = Session::builder(rt.environment())
            .and_then(|b| b.with_execution_providers(providers).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(path))
            .map_err(|e| open(format!("not an ONNX model ONNX Runtime can load: {e}")))?;
        let (ins, outs) = (session.inputs(), session.outputs());
        if ins.len() != 1 || outs.len() != 1 {
            return Err(shape(format!(
                "it has {} inputs and {} outputs",
                ins.len(),
                outs.len()
            )));
        }
        let input = ins[0].name().to_string();
        let output = outs[0].name().to_string();
        let din = image_dims(ins[0].dtype()).map_err(|m| shape(format!("input {input}: {m}")))?;
        let dout =
            image_dims(outs[0].dtype()).map_err(|m| shape(format!("output {output}: {m}")))?;
        let fixed = (din[2] > 0 && din[3] > 0).then(|| (din[2] as usize, din[3] as usize));
        let mut up = ModelUpscaler {
            path: path.to_path_buf(),
            session,
            input,
            output,
            fixed,
            scale: 1,
        };
        let declared = (din[2] > 0 && dout[2] > 0 && dout[2] % din[2] == 0)
            .then(|| (dout[2] / din[2]) as usize);
        up.scale = match declared {
            Some(s) => s,
            None => {
                // Free shapes: one small run tells the ratio.
                let (ph, pw) = fixed.unwrap_or((16, 16));
                let probe = vec![0.5f32; 3 * ph * pw];
                let (oshape, _) = up.run_tile(&probe, ph, pw)?;
                let (oh, ow) = (oshape[2], oshape[3]);
                if oh == 0 || oh % ph != 0 || ow % pw != 0 || oh / ph != ow / pw {
                    return Err(shape(format!(
                        "a {pw}x{ph} input gave {ow}x{oh}: not a whole scale factor"
                    )));
                }
                oh / ph
            }
        };
        Ok(up)
    }

    /// The model's scale factor.
    pub fn scale(&self) -> usize {
        self.scale
    }

    fn run_tile(
        &mut self,
        chw: &[f32],
        h: usize,
        w: usize,
    ) -> Result<(Vec<usize>, Vec<f32>), UpscaleError> {
        let out = run(
            &mut self.session,
            vec![Input::F32(&self.input, vec![1, 3, h, w], chw)],
            &[self.output.as_str()],
        )
        .map_err(|e| UpscaleError::Run {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let (shape, data) = out.into_iter().next().unwrap_or_default();
        if shape.len() != 4 || shape[1] != 3 || data.len() != shape.iter().product::<usize>() {
            return Err(UpscaleError::Shape {
                path: self.path.clone(),
                message: format!("output shape {shape:?}"),
            });
        }
        Ok((shape, data))
    }

    /// Upscales `img` by the model's factor over tiles of `tile` input pixels overlapping by
    /// `overlap` (a graph with a fixed input size uses its own tile size, the picture's edge
    /// repeated where a tile passes it).
    pub fn upscale(
        &mut self,
        img: &RgbImage,
        tile: usize,
        overlap: usize,
    ) -> Result<RgbImage, UpscaleError> {
        let (w, h) = (img.width as usize, img.height as usize);
        let (th, tw) = self.fixed.unwrap_or((tile.min(h), tile.min(w)));
        for (t, side) in [(th, h), (tw, w)] {
            if t < side && t <= 2 * overlap {
                return Err(UpscaleError::Tiling { tile: t, overlap });
            }
        }
        let s = self.scale;
        let (ow, oh) = (w * s, h * s);
        let mut acc = vec![0f32; 3 * oh * ow];
        let mut weight = vec![0f32; oh * ow];
        let ys = starts(h, th, overlap);
        let xs = starts(w, tw, overlap);
        let mut chw = vec![0f32; 3 * th * tw];
        for &y0 in &ys {
            for &x0 in &xs {
                for c in 0..3 {
                    for y in 0..th {
                        for x in 0..tw {
                            let (sy, sx) = ((y0 + y).min(h - 1), (x0 + x).min(w - 1));
                            chw[c * th * tw + y * tw + x] =
                                f32::from(img.pixels[(sy * w + sx) * 3 + c]) / 255.0;
                        }
                    }
                }
                let (shape, out) = self.run_tile(&chw, th, tw)?;
                if shape[2] != th * s || shape[3] != tw * s {
                    return Err(UpscaleError::Shape {
                        path: self.path.clone(),
                        message: format!(
                            "a {tw}x{th} tile gave {}x{}, not {s}×",
                            shape[3], shape[2]
                        ),
                    });
                }
                // Each tile's weight ramps up from its inner edges, clear of the pixels a
                // neighbour sees better (a quarter of the overlap), so the weights sum to one.
                let wy = ramp(y0, th, h, overlap, s);
                let wx = ramp(x0, tw, w, overlap, s);
                let (ot_h, ot_w) = (th * s, tw * s);
                for y in 0..ot_h.min(oh - y0 * s) {
                    for x in 0..ot_w.min(ow - x0 * s) {
                        let k = wy[y] * wx[x];
                        if k == 0.0 {
                            continue;
                        }
                        let (gy, gx) = (y0 * s + y, x0 * s + x);
                        weight[gy * ow + gx] += k;
                        for c in 0..3 {
                            acc[c * oh * ow + gy * ow + gx] +=
                                k * out[c * ot_h * ot_w + y * ot_w + x];
                        }
                    }
                }
            }
        }
        let mut pixels = vec![0u8; 3 * oh * ow];
        for i in 0..oh * ow {
            let k = weight[i].max(1e-12);
            for c in 0..3 {
                let v = (acc[c * oh * ow + i] / k).clamp(0.0, 1.0);
                pixels[i * 3 + c] = (v * 255.0).round() as u8;
            }
        }
        Ok(RgbImage {
            width: ow as u32,
            height: oh as u32,
            pixels,
        })
    }
}

/// Tile origins along a side of `len` pixels: as few tiles of `tile` as overlap by at least
/// `overlap`, spread evenly from one end to the other.
pub fn starts(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if tile >= len {
        return vec![0];
    }
    let step = tile.saturating_sub(overlap).max(1);
    let n = (len - overlap).div_ceil(step).max(2);
    (0..n)
        .map(|k| (k * (len - tile) + (n - 1) / 2) / (n - 1))
        .collect()
}

/// A tile's weights along one side (output pixels): 1 inside, rising over the overlap on each side
/// that has a neighbour, from 0 at a quarter of the overlap in to 1 at three quarters.
pub fn ramp(start: usize, tile: usize, len: usize, overlap: usize, s: usize) -> Vec<f32> {
    let n = tile * s;
    let margin = (overlap * s) as f32 / 4.0;
    let width = ((overlap * s) as f32 / 2.0).max(1.0);
    let rise = |d: f32| ((d - margin) / width).clamp(0.0, 1.0);
    (0..n)
        .map(|i| {
            let d = i as f32 + 0.5;
            let mut v = 1.0f32;
            if start > 0 {
                v = v.min(rise(d));
            }
            if start + tile < len {
                v = v.min(rise(n as f32 - d));
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_side_and_end_flush() {
        assert_eq!(starts(100, 192, 16), vec![0]);
        assert_eq!(starts(100, 40, 10), vec![0, 30, 60]);
        assert_eq!(starts(64, 32, 8), vec![0, 16, 32]);
        for (len, tile, overlap) in [(100, 40, 8), (1000, 192, 16), (65, 64, 8)] {
            let s = starts(len, tile, overlap);
            assert_eq!((s[0], s[s.len() - 1] + tile), (0, len));
            assert!(s.windows(2).all(|p| p[0] + tile >= p[1] + overlap), "{s:?}");
        }
    }

    /// Where tiles overlap by exactly the overlap, the two ramps sum to one at every pixel.
    #[test]
    fn ramps_of_neighbours_sum_to_one() {
        let (len, tile, overlap, s) = (100usize, 40usize, 10usize, 2usize);
        let mut sum = vec![0f32; len * s];
        for st in starts(len, tile, overlap) {
            for (i, w) in ramp(st, tile, len, overlap, s).into_iter().enumerate() {
                sum[st * s + i] += w;
            }
        }
        assert!(sum.iter().all(|v| (v - 1.0).abs() < 1e-5), "{sum:?}");
    }
}
