//! Latents to pixels: the VAE decoder output in [-1, 1] to 8-bit RGB, as diffusers post-processes it
//! (`(x / 2 + 0.5).clamp(0, 1)`, then `round(x * 255)`). A decoder built with
//! [`crate::model::rgb_tail`] does that in its own graph, on its device; [`to_rgb`] does it on the
//! host for one without. [`VaeDecoder`] is a handle on the decoder session that any thread may
//! decode with (the engine thread, or the decode worker beside it); an fp16 decoder whose output
//! overflows is replaced by the fp32 one and the image decoded again.

use super::error::{run_err, PipelineError};
use crate::job::RgbImage;
use crate::model::rgb_tail;
use crate::runtime::tensor_io::{run, run_read, Input};
use ort::session::Session;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Builds the fp32 decoder session (called at most once, on the fp16 decoder's first overflow).
pub(crate) type Fallback = Box<dyn FnOnce() -> Result<Session, PipelineError> + Send>;

/// The decoder session and, when it runs the fp16 graph, the way to the fp32 one.
pub(crate) struct VaeSlot {
    pub session: Session,
    pub fallback: Option<Fallback>,
}

impl VaeSlot {
    pub(crate) fn fp32(session: Session) -> Self {
        VaeSlot {
            session,
            fallback: None,
        }
    }
}

/// The VAE decoder session, shared: whoever decodes holds it for that one run.
#[derive(Clone)]
pub struct VaeDecoder {
    slot: Arc<Mutex<VaeSlot>>,
    /// The latents are divided by it before the decoder (the model's `scaling_factor`).
    scale: f32,
    /// Set when the fp16 decoder overflowed: later builds of the decoder use fp32 directly.
    overflowed: Arc<AtomicBool>,
}

/// Locks a shared session; one left poisoned by a panicking run is still whole (ONNX Runtime holds
/// no half-written state of ours), so it is used on.
pub(crate) fn lock<T>(session: &Mutex<T>) -> MutexGuard<'_, T> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

impl VaeDecoder {
    pub(crate) fn new(slot: Arc<Mutex<VaeSlot>>, scale: f32, overflowed: Arc<AtomicBool>) -> Self {
        VaeDecoder {
            slot,
            scale,
            overflowed,
        }
    }

    /// Decodes latents `[1, 4, h, w]` to an image. Non-finite output from the fp16 decoder (an
    /// overflow) switches the shared session to fp32, says so once, and decodes again.
    pub fn decode(&self, latents: &[f32], h: usize, w: usize) -> Result<RgbImage, PipelineError> {
        let z: Vec<f32> = latents.iter().map(|x| x / self.scale).collect();
        let mut slot = lock(&self.slot);
        let (mut image, finite) = run_decoder(&mut slot.session, &z, h, w)?;
        if !finite {
            if let Some(build) = slot.fallback.take() {
                tracing::warn!(
                    "the fp16 VAE decoder overflowed (non-finite pixels); this image and the \
                     next ones are decoded in fp32 (--vae-precision fp32 skips the fp16 try)"
                );
                slot.session = build()?;
                self.overflowed.store(true, Ordering::Relaxed);
                image = run_decoder(&mut slot.session, &z, h, w)?.0;
            }
        }
        Ok(image)
    }
}

/// One run of the decoder on `z` (already divided by the scaling factor): the picture, and whether
/// every value the decoder gave was finite. A decoder built with [`rgb_tail`] makes the bytes
/// itself; another's f32 output is converted here.
fn run_decoder(
    session: &mut Session,
    z: &[f32],
    h: usize,
    w: usize,
) -> Result<(RgbImage, bool), PipelineError> {
    let input = || vec![Input::F32("latent_sample", vec![1, 4, h, w], z)];
    if !makes_bytes(session) {
        let out = run(session, input(), &["sample"]).map_err(run_err("VAE decoder"))?;
        let (shape, data) = out.into_iter().next().unwrap_or_default();
        let finite = data.iter().all(|x| x.is_finite());
        let (ih, iw) = (
            shape.get(2).copied().unwrap_or(0),
            shape.get(3).copied().unwrap_or(0),
        );
        return Ok((to_rgb(&data, iw, ih), finite));
    }
    run_read(session, input(), |out| {
        let missing = |name: &str| ort::Error::new(format!("the decoder gave no {name}"));
        let rgb = out
            .get(rgb_tail::RGB)
            .ok_or_else(|| missing(rgb_tail::RGB))?;
        let (shape, bytes) = rgb.try_extract_tensor::<u8>()?;
        let dim = |i: usize| shape.get(i).map_or(0, |&d| d.max(0) as usize);
        let (ih, iw) = (dim(1), dim(2));
        if ih * iw == 0 || bytes.len() < ih * iw * 3 {
            return Err(ort::Error::new(format!(
                "the decoder gave {} bytes of shape {:?}, not a picture",
                bytes.len(),
                &shape[..]
            )));
        }
        let check = out
            .get(rgb_tail::CHECK)
            .ok_or_else(|| missing(rgb_tail::CHECK))?;
        let (_, sum) = check.try_extract_tensor::<f32>()?;
        let image = RgbImage {
            width: iw as u32,
            height: ih as u32,
            // The first image of the batch (there is one).
            pixels: bytes.iter().take(ih * iw * 3).copied().collect(),
        };
        Ok((image, sum.iter().all(|x| x.is_finite())))
    })
    .map_err(run_err("VAE decoder"))
}

/// Whether `session` is a decoder built with [`rgb_tail`]: it gives the picture's bytes.
pub(crate) fn makes_bytes(session: &Session) -> bool {
    session.outputs().iter().any(|o| o.name() == rgb_tail::RGB)
}

/// Converts one CHW image (3 × h × w, values in [-1, 1]) to interleaved RGB bytes.
pub fn to_rgb(chw: &[f32], width: usize, height: usize) -> RgbImage {
    let plane = width * height;
    // Planes to bytes first (a loop the compiler vectorises), then interleaved.
    let bytes: Vec<u8> = chw.iter().take(3 * plane).map(|&v| to_byte(v)).collect();
    let mut pixels = vec![0u8; plane * 3];
    let (r, rest) = bytes.split_at(plane.min(bytes.len()));
    let (g, b) = rest.split_at(plane.min(rest.len()));
    for (((px, &r), &g), &b) in pixels.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
        px.copy_from_slice(&[r, g, b]);
    }
    RgbImage {
        width: width as u32,
        height: height as u32,
        pixels,
    }
}

/// One decoder value in [-1, 1] as a byte: `round(clamp(v / 2 + 0.5, 0, 1) * 255)`, rounding half
/// away from zero as `f32::round` does, without its library call per value (`cargo bench`: a 512²
/// image 1.3–1.7 ms against 2.3–3.7 ms on 2 CPU cores). Exact: for `y` in [0, 255] the truncation `t` is
/// exact and so is `y - t`. NaN gives 0, as `f32::round` then `as u8` did.
#[inline]
fn to_byte(v: f32) -> u8 {
    let y = (v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
    let t = y as i32;
    (t + i32::from(y - t as f32 >= 0.5)) as u8
}

/// A cheap preview of latents `[4, h, w]` (no VAE): each pixel is a fixed linear mix of the four
/// channels, at latent resolution.
pub fn preview(latents: &[f32], width: usize, height: usize, factors: &[[f32; 3]; 4]) -> RgbImage {
    let plane = width * height;
    let mut chw = vec![0f32; 3 * plane];
    for i in 0..plane {
        for (c, f) in factors.iter().enumerate() {
            let v = latents[c * plane + i];
            for (k, w) in f.iter().enumerate() {
                chw[k * plane + i] += v * w;
            }
        }
    }
    to_rgb(&chw, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_mixes_channels_with_the_factors() {
        // One pixel: channel 0 = 1, others 0 -> the first row of factors, mapped from [-1, 1].
        let f = [[1.0, 0.0, -1.0], [0.0; 3], [0.0; 3], [0.0; 3]];
        let img = preview(&[1.0, 0.0, 0.0, 0.0], 1, 1, &f);
        assert_eq!(img.pixels, vec![255, 128, 0]);
    }

    /// The fast rounding gives `f32::round`'s byte for every value: a dense sweep of [-1.1, 1.1],
    /// each value whose byte is a tie (k + 0.5) and its float neighbours, and the specials.
    #[test]
    fn bytes_equal_the_rounding_formula() {
        let want = |v: f32| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
        let mut values: Vec<f32> = (-1_100_000..=1_100_000).map(|i| i as f32 * 1e-6).collect();
        for k in 0..256 {
            // v such that (v / 2 + 0.5) * 255 is k + 0.5, and the floats on either side of it.
            let v = ((k as f32 + 0.5) / 255.0 - 0.5) * 2.0;
            values.extend([v, v.next_up(), v.next_down()]);
        }
        values.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            1.0,
            -1.0,
        ]);
        for v in values {
            assert_eq!(to_byte(v), want(v), "value {v:e}");
        }
    }

    #[test]
    fn planes_interleave_into_rgb() {
        let (w, h) = (3, 2);
        let plane = w * h;
        let chw: Vec<f32> = (0..3 * plane).map(|i| i as f32 / 9.0 - 1.0).collect();
        let img = to_rgb(&chw, w, h);
        for i in 0..plane {
            for c in 0..3 {
                assert_eq!(img.pixels[i * 3 + c], to_byte(chw[c * plane + i]));
            }
        }
    }

    #[test]
    fn values_map_like_diffusers_postprocess() {
        // -1 -> 0; 0.5 -> 0.75 * 255 = 191.25 -> 191; values past 1 clamp to 255.
        let img = to_rgb(&[-1.0, 0.5, 3.0], 1, 1);
        assert_eq!(img.pixels, vec![0, 191, 255]);
    }
}
