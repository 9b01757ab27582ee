//! Decoding large latents in tiles, exactly: [`VaeTiling`] says when (`off` by default; `auto`:
//! above [`AUTO_AREA`] latent pixels), [`TiledDecoder`] runs the fp32 decoder cut at its GroupNorms
//! ([`crate::model::vae_cut`]) segment by segment, each on tiles with a halo of the segment's reach,
//! and applies every GroupNorm on the host to the whole tensor, so the picture is the untiled one up
//! to float rounding; [`TiledEncoder`] does the same for image-to-image's encoder. Device memory
//! is one tile of a segment, and for the mid-block attention one chunk of query rows (at most a
//! tile's pixels and [`ATTENTION_CHUNK_BYTES`] of scores) beside the whole q, k, v; the host holds a
//! few full-size activations.

use super::error::{run_err, PipelineError};
use super::vae::to_rgb;
use crate::job::RgbImage;
use crate::model::vae_cut::{self, Attention, AttentionPlan, Norm, Param, Plan};
use crate::runtime::session::build_session;
use crate::runtime::tensor_io::{host_value, run, run_with, Input};
use crate::runtime::{Runtime, SessionOptions};
use ort::session::Session;
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Latent pixels above which `auto` tiles (128 × 128 latents: a 1024² SD image).
pub const AUTO_AREA: usize = 128 * 128;

/// The most bytes of attention scores (f32, query rows × key pixels × heads) one query chunk of
/// the tiled VAE's attention computes; its softmax is as large again, so the attention's working
/// memory beyond q, k, v and o is at most twice this (256 MiB). 128 MiB is 2048 query rows at
/// 128×128 latents and 512 at 256×256, large enough for the matrix products to run at full speed.
pub const ATTENTION_CHUNK_BYTES: usize = 128 << 20;

/// When the VAE decodes in tiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TileMode {
    /// Above [`AUTO_AREA`] latent pixels.
    Auto,
    /// Whenever the latents are larger than a tile.
    On,
    /// Never (the default).
    #[default]
    Off,
}

/// Tiled VAE decoding: when, and the tile side in latent pixels (the halo each segment needs is
/// added around it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeTiling {
    pub mode: TileMode,
    pub tile: usize,
}

impl Default for VaeTiling {
    fn default() -> Self {
        VaeTiling {
            mode: TileMode::Off,
            tile: 64,
        }
    }
}

impl VaeTiling {
    /// Whether latents of `h` × `w` are decoded in tiles.
    pub fn applies(&self, h: usize, w: usize) -> bool {
        let larger = h > self.tile || w > self.tile;
        match self.mode {
            TileMode::Off => false,
            TileMode::On => larger,
            TileMode::Auto => larger && h * w > AUTO_AREA,
        }
    }
}

/// A full-size activation on the host, `[1, C, ...]`.
struct Host {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// A tensor the host keeps between steps: stored, or a GroupNorm's output kept as the
/// GroupNorm's input (which a later step reads too: a residual) and the per-channel affine that
/// normalises it, applied to each crop as it is read (one full-size tensor less).
enum Entry {
    Stored(Host),
    Normed {
        src: String,
        a: Vec<f32>,
        b: Vec<f32>,
    },
}

/// What a segment reads: a stored tensor and, for a GroupNorm's output, the affine to apply.
struct View<'a> {
    host: &'a Host,
    affine: Option<(&'a [f32], &'a [f32])>,
}

fn view<'a>(store: &'a HashMap<String, Entry>, name: &str) -> Result<View<'a>, PipelineError> {
    match store.get(name) {
        Some(Entry::Stored(host)) => Ok(View { host, affine: None }),
        Some(Entry::Normed { src, a, b }) => match store.get(src) {
            Some(Entry::Stored(host)) => Ok(View {
                host,
                affine: Some((a, b)),
            }),
            _ => Err(missing(src)),
        },
        None => Err(missing(name)),
    }
}

/// The full tensor an entry stands for.
fn materialize(store: &HashMap<String, Entry>, e: &Entry) -> Result<Host, PipelineError> {
    let (host, affine) = match e {
        Entry::Stored(h) => (h, None),
        Entry::Normed { src, a, b } => match store.get(src) {
            Some(Entry::Stored(h)) => (h, Some((a, b))),
            _ => return Err(missing(src)),
        },
    };
    let mut data = host.data.clone();
    if let Some((a, b)) = affine {
        apply_affine(&mut data, a, b);
    }
    Ok(Host {
        shape: host.shape.clone(),
        data,
    })
}

/// A VAE graph cut at its GroupNorms: segment sessions and the GroupNorms' parameters.
struct Tiled {
    plan: Plan,
    /// One per segment; None for an empty one.
    sessions: Vec<Option<Session>>,
    /// The split attention's sessions, for a segment [`vae_cut::cut`] split.
    attention: Vec<Option<AttentionSessions>>,
    /// γ and β of each GroupNorm.
    affine: Vec<(Vec<f32>, Vec<f32>)>,
    /// Query chunks the attention ran in during the last run (0: it ran whole).
    chunks: usize,
    /// Whether a split attention runs in chunks (else whole, as an unsplit one).
    chunked: bool,
}

/// Sessions of an [`Attention`]'s three graphs.
struct AttentionSessions {
    pre: Session,
    core: Session,
    post: Session,
}

impl Tiled {
    /// Cuts the plain fp32 `graph` (external file `external_file`, assembled as `weights`) and
    /// builds a session per segment.
    fn build(
        rt: &Runtime,
        opts: &SessionOptions,
        what: &str,
        graph: &[u8],
        external_file: &str,
        weights: Arc<[u8]>,
    ) -> Result<Tiled, PipelineError> {
        let plan = vae_cut::cut(graph).map_err(|e| PipelineError::Job(format!("{what}: {e}")))?;
        let opts = opts.without_cuda_graph();
        let session = |name: String, model: &[u8]| {
            build_session(
                rt,
                &name,
                model,
                external_file,
                Arc::clone(&weights),
                &opts,
                &[],
                &[],
            )
        };
        let mut sessions = Vec::with_capacity(plan.segments.len());
        let mut attention = Vec::with_capacity(plan.segments.len());
        for (k, seg) in plan.segments.iter().enumerate() {
            attention.push(match &seg.attention {
                AttentionPlan::Split(a) => {
                    let name = |part: &str| format!("{what} segment {k} attention {part}");
                    Some(AttentionSessions {
                        pre: session(name("q, k, v"), &a.pre)?,
                        core: session(name("chunk"), &a.core)?,
                        post: session(name("output"), &a.post)?,
                    })
                }
                AttentionPlan::Unrecognised(why) => {
                    tracing::warn!(
                        "{what}: the attention of segment {k} runs whole, not in query chunks \
                         (its graph is not the pattern stipple splits: {why})"
                    );
                    None
                }
                AttentionPlan::None => None,
            });
            // The whole segment too: the attention's fallback when its tensors are not shaped
            // as the split expects.
            sessions.push(if seg.nodes == 0 {
                None
            } else {
                Some(session(format!("{what} segment {k}"), &seg.model)?)
            });
        }
        let values = |p: &Param| -> Result<Vec<f32>, PipelineError> {
            match p {
                Param::Values(v) => Ok(v.clone()),
                Param::External { offset, length } => weights
                    .get(*offset..offset + length)
                    .map(|b| {
                        b.chunks_exact(4)
                            .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                            .collect()
                    })
                    .ok_or_else(|| {
                        PipelineError::Job(format!(
                            "{what}: a GroupNorm parameter lies outside the weights"
                        ))
                    }),
            }
        };
        let affine = plan
            .norms
            .iter()
            .map(|n| Ok((values(&n.gamma)?, values(&n.beta)?)))
            .collect::<Result<_, PipelineError>>()?;
        Ok(Tiled {
            plan,
            sessions,
            attention,
            affine,
            chunks: 0,
            chunked: true,
        })
    }

    /// Runs the graph on `input`, segments on tiles of `tile` latent pixels (`latent_h` is the
    /// latents' height: a segment at 8 times it tiles by 8 × `tile`) plus their halo.
    fn run(&mut self, input: Host, latent_h: usize, tile: usize) -> Result<Host, PipelineError> {
        let mut store: HashMap<String, Entry> = HashMap::new();
        store.insert(self.plan.input.clone(), Entry::Stored(input));
        self.chunks = 0;
        for k in 0..self.plan.segments.len() {
            if let Some(session) = self.sessions[k].as_mut() {
                let seg = &self.plan.segments[k];
                let split = match (&seg.attention, self.attention[k].as_mut()) {
                    (AttentionPlan::Split(a), Some(s)) if self.chunked => {
                        let rows = tile.max(1).saturating_mul(tile.max(1));
                        run_attention(s, a, &seg.outputs, &store, rows)?
                    }
                    _ => None,
                };
                let outs = match split {
                    Some((outs, chunks)) => {
                        self.chunks += chunks;
                        outs
                    }
                    None => run_segment(session, seg, &store, latent_h, tile.max(1))?,
                };
                for (name, t) in seg.outputs.iter().zip(outs) {
                    store.insert(name.clone(), Entry::Stored(t));
                }
            }
            if let Some(norm) = self.plan.norms.get(k) {
                let (gamma, beta) = &self.affine[k];
                let last = self.plan.last_use.get(&norm.x) == Some(&k);
                let y = match store.remove(&norm.x) {
                    // Normalised in place when nothing after it reads the GroupNorm's input ...
                    Some(Entry::Stored(mut t)) if last => {
                        let (a, b) = group_affine(&t, norm, gamma, beta)?;
                        apply_affine(&mut t.data, &a, &b);
                        Entry::Stored(t)
                    }
                    // ... else kept as its input and the affine, applied to each crop read.
                    Some(Entry::Stored(t)) => {
                        let (a, b) = group_affine(&t, norm, gamma, beta)?;
                        store.insert(norm.x.clone(), Entry::Stored(t));
                        Entry::Normed {
                            src: norm.x.clone(),
                            a,
                            b,
                        }
                    }
                    Some(e @ Entry::Normed { .. }) => {
                        let mut t = materialize(&store, &e)?;
                        if !last {
                            store.insert(norm.x.clone(), e);
                        }
                        let (a, b) = group_affine(&t, norm, gamma, beta)?;
                        apply_affine(&mut t.data, &a, &b);
                        Entry::Stored(t)
                    }
                    None => return Err(missing(&norm.x)),
                };
                store.insert(norm.y.clone(), y);
            }
            let plan = &self.plan;
            let live = |name: &String| *name == plan.output || plan.last_use.get(name) != Some(&k);
            let sources: Vec<String> = store
                .iter()
                .filter(|(n, _)| live(n))
                .filter_map(|(_, e)| match e {
                    Entry::Normed { src, .. } => Some(src.clone()),
                    Entry::Stored(_) => None,
                })
                .collect();
            store.retain(|name, _| live(name) || sources.contains(name));
            if tracing::enabled!(tracing::Level::DEBUG) {
                let held: usize = store
                    .values()
                    .map(|e| match e {
                        Entry::Stored(h) => h.data.len() * 4,
                        Entry::Normed { .. } => 0,
                    })
                    .sum();
                tracing::debug!(
                    "tiled VAE step {k}: {} MB held, RSS {:.0} MB (peak {:.0})",
                    held >> 20,
                    proc_status_mb("VmRSS:"),
                    proc_status_mb("VmHWM:")
                );
            }
        }
        match store.remove(&self.plan.output) {
            Some(e) => materialize(&store, &e),
            None => Err(missing(&self.plan.output)),
        }
    }

    /// Number of segments (GroupNorms + 1) and of those that run whole.
    fn segment_counts(&self) -> (usize, usize) {
        let whole = self.plan.segments.iter().filter(|s| !s.tileable).count();
        (self.plan.segments.len(), whole)
    }
}

/// Runs the attention segment `a` in chunks of at most `max_rows` query rows (fewer where the
/// scores would pass [`ATTENTION_CHUNK_BYTES`]): q, k, v for the whole picture, then o chunk by
/// chunk, then the rest of the segment on the whole o. Returns the segment's `outputs` (in order)
/// and the number of chunks, or None (with a warning) where q, k, v are not shaped as a MatMul →
/// Softmax → MatMul attention without broadcasting: the caller then runs the segment whole.
fn run_attention(
    s: &mut AttentionSessions,
    a: &Attention,
    outputs: &[String],
    store: &HashMap<String, Entry>,
    max_rows: usize,
) -> Result<Option<(Vec<Host>, usize)>, PipelineError> {
    let err = run_err("tiled VAE attention");
    let [q, k, v] = {
        let views: Vec<View> = a
            .pre_inputs
            .iter()
            .map(|n| view(store, n))
            .collect::<Result<_, _>>()?;
        let data: Vec<Cow<[f32]>> = views.iter().map(whole).collect();
        let inputs = whole_inputs(&a.pre_inputs, &views, &data).collect();
        let got = run(&mut s.pre, inputs, &[&a.q, &a.k, &a.v]).map_err(&err)?;
        match <[_; 3]>::try_from(got) {
            Ok(qkv) => qkv.map(|(shape, data)| Host { shape, data }),
            Err(_) => return Err(missing(&a.q)),
        }
    };
    let r = q.shape.len();
    let shaped = r >= 2
        && k.shape.len() == r
        && v.shape.len() == r
        && q.shape[..r - 2] == k.shape[..r - 2]
        && q.shape[..r - 2] == v.shape[..r - 2]
        && q.shape[r - 1] == k.shape[r - 2]
        && k.shape[r - 1] == v.shape[r - 2];
    if !shaped {
        tracing::warn!(
            "tiled VAE: the attention runs whole (q {:?}, k {:?}, v {:?} are not shaped for \
             query chunks)",
            q.shape,
            k.shape,
            v.shape
        );
        return Ok(None);
    }
    let lead: usize = q.shape[..r - 2].iter().product();
    let (n, d, keys, dv) = (
        q.shape[r - 2],
        q.shape[r - 1],
        k.shape[r - 1],
        v.shape[r - 1],
    );
    let per_row = 4 * lead.max(1) * keys.max(1);
    let rows = (ATTENTION_CHUNK_BYTES / per_row).clamp(1, max_rows.max(1));
    // k and v go to ONNX Runtime once and are passed by reference to every chunk.
    let kv = [(&a.k, k), (&a.v, v)]
        .into_iter()
        .map(|(name, t)| host_value(&s.core, Input::F32(name, t.shape, &t.data)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(&err)?;
    let mut o_shape = q.shape.clone();
    o_shape[r - 1] = dv;
    let mut o = vec![0f32; lead * n * dv];
    let mut chunk = Vec::with_capacity(lead * rows.min(n) * d);
    let mut chunks = 0;
    for r0 in (0..n).step_by(rows) {
        let m = rows.min(n - r0);
        chunk.clear();
        for l in 0..lead {
            chunk.extend_from_slice(&q.data[(l * n + r0) * d..(l * n + r0 + m) * d]);
        }
        let mut shape = q.shape.clone();
        shape[r - 2] = m;
        let extra = kv
            .iter()
            .map(|(name, t)| (name.clone(), t.into()))
            .collect();
        let got = run_with(
            &mut s.core,
            vec![Input::F32(&a.q, shape, &chunk)],
            extra,
            &[&a.o],
        )
        .map_err(&err)?;
        let (shape, data) = got.into_iter().next().ok_or_else(|| missing(&a.o))?;
        let mut want = o_shape.clone();
        want[r - 2] = m;
        if shape != want {
            return Err(PipelineError::Job(format!(
                "tiled VAE: an attention chunk gave {shape:?}, not {want:?}"
            )));
        }
        for l in 0..lead {
            o[(l * n + r0) * dv..(l * n + r0 + m) * dv]
                .copy_from_slice(&data[l * m * dv..(l + 1) * m * dv]);
        }
        chunks += 1;
    }
    drop(kv);
    drop(q);
    let views: Vec<View> = a
        .post_inputs
        .iter()
        .map(|n| view(store, n))
        .collect::<Result<_, _>>()?;
    let data: Vec<Cow<[f32]>> = views.iter().map(whole).collect();
    let mut inputs = vec![Input::F32(&a.o, o_shape, &o)];
    inputs.extend(whole_inputs(&a.post_inputs, &views, &data));
    let names: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let got = run(&mut s.post, inputs, &names).map_err(&err)?;
    Ok(Some((
        got.into_iter()
            .map(|(shape, data)| Host { shape, data })
            .collect(),
        chunks,
    )))
}

/// The session inputs `names` read from `views`, whose whole tensors (from [`whole`]) are `data`.
fn whole_inputs<'a>(
    names: &'a [String],
    views: &'a [View],
    data: &'a [Cow<[f32]>],
) -> impl Iterator<Item = Input<'a>> {
    names
        .iter()
        .zip(views.iter().zip(data))
        .map(|(n, (v, d))| Input::F32(n, v.host.shape.clone(), d))
}

/// A view's whole tensor: its data, or a normalised copy where a GroupNorm's affine applies.
fn whole<'a>(v: &View<'a>) -> Cow<'a, [f32]> {
    match v.affine {
        Some((a, b)) => {
            let mut d = v.host.data.clone();
            apply_affine(&mut d, a, b);
            Cow::Owned(d)
        }
        None => Cow::Borrowed(&v.host.data),
    }
}

/// The tiled VAE decoder (built once, at the first tiled decode).
pub struct TiledDecoder {
    graph: Tiled,
    /// The latents are divided by it before the decoder (the model's `scaling_factor`).
    scale: f32,
}

impl TiledDecoder {
    /// Cuts the plain fp32 decoder `graph` (external file `external_file`, assembled as `weights`)
    /// and builds a session per segment.
    pub fn build(
        rt: &Runtime,
        opts: &SessionOptions,
        graph: &[u8],
        external_file: &str,
        weights: Arc<[u8]>,
        scale: f32,
    ) -> Result<TiledDecoder, PipelineError> {
        let what = "VAE decoder";
        Ok(TiledDecoder {
            graph: Tiled::build(rt, opts, what, graph, external_file, weights)?,
            scale,
        })
    }

    /// Number of segments (GroupNorms + 1) and of those that run whole.
    pub fn segment_counts(&self) -> (usize, usize) {
        self.graph.segment_counts()
    }

    /// Query chunks the mid-block attention ran in during the last decode (0: it ran whole).
    pub fn attention_chunks(&self) -> usize {
        self.graph.chunks
    }

    /// Whether the attention runs in query chunks (the default) or whole, as it did before it
    /// was split (for measurements: `vae_tile_bench ... tiled-whole`).
    pub fn set_attention_chunking(&mut self, on: bool) {
        self.graph.chunked = on;
    }

    /// Decodes latents `[4, h, w]` with segments run on tiles of `tile` latent pixels (at each
    /// segment's resolution: `tile` × its upsampling) plus their halo.
    pub fn decode(
        &mut self,
        latents: &[f32],
        h: usize,
        w: usize,
        tile: usize,
    ) -> Result<RgbImage, PipelineError> {
        let input = Host {
            shape: vec![1, latents.len() / (h * w).max(1), h, w],
            data: latents.iter().map(|x| x / self.scale).collect(),
        };
        let out = self.graph.run(input, h, tile)?;
        match out.shape.as_slice() {
            [1, 3, oh, ow] => Ok(to_rgb(&out.data, *ow, *oh)),
            s => Err(PipelineError::Job(format!(
                "VAE decoder: the tiled decode gave a {s:?} picture"
            ))),
        }
    }
}

/// The tiled VAE encoder (image-to-image's first step), built at its first tiled encode.
pub struct TiledEncoder {
    graph: Tiled,
}

impl TiledEncoder {
    /// Cuts the plain fp32 encoder `graph` and builds a session per segment.
    pub fn build(
        rt: &Runtime,
        opts: &SessionOptions,
        graph: &[u8],
        external_file: &str,
        weights: Arc<[u8]>,
    ) -> Result<TiledEncoder, PipelineError> {
        let what = "VAE encoder";
        Ok(TiledEncoder {
            graph: Tiled::build(rt, opts, what, graph, external_file, weights)?,
        })
    }

    /// Query chunks the mid-block attention ran in during the last encode (0: it ran whole).
    pub fn attention_chunks(&self) -> usize {
        self.graph.chunks
    }

    /// Encodes a picture `[3, h, w]` in [-1, 1] to the encoder's moments (`[8, h/f, w/f]` for a
    /// downsampling factor f), tiling by `tile` latent pixels; `latent_h` is h/f.
    pub fn encode(
        &mut self,
        chw: &[f32],
        h: usize,
        w: usize,
        latent_h: usize,
        tile: usize,
    ) -> Result<Vec<f32>, PipelineError> {
        let input = Host {
            shape: vec![1, 3, h, w],
            data: chw.to_vec(),
        };
        Ok(self.graph.run(input, latent_h, tile)?.data)
    }
}

/// A memory figure of this process from /proc/self/status in MB (0 where there is none).
fn proc_status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn missing(name: &str) -> PipelineError {
    PipelineError::Job(format!("tiled VAE: no {name:?} when a step needs it"))
}

/// Runs segment `seg` on the host tensors it reads: whole, or tile by tile when it is tileable
/// and larger than a tile; returns its outputs in order.
fn run_segment(
    session: &mut Session,
    seg: &vae_cut::Segment,
    store: &HashMap<String, Entry>,
    h: usize,
    tile: usize,
) -> Result<Vec<Host>, PipelineError> {
    let views: Vec<View> = seg
        .inputs
        .iter()
        .map(|n| view(store, n))
        .collect::<Result<_, _>>()?;
    let ins: Vec<&Host> = views.iter().map(|v| v.host).collect();
    let outs: Vec<&str> = seg.outputs.iter().map(String::as_str).collect();
    let four = ins.iter().all(|t| t.shape.len() == 4 && t.shape[0] == 1);
    let (bh, bw) = ins
        .iter()
        .filter(|t| t.shape.len() == 4)
        .map(|t| (t.shape[2], t.shape[3]))
        .min()
        .unwrap_or((0, 0));
    // Tiles start on multiples of the segment's downsampling, so each tile's output pixels sit
    // on the whole output's grid.
    let d = seg.down.max(1);
    let core = (tile * bh / h.max(1)).max(1).next_multiple_of(d);
    let halo = seg.halo.next_multiple_of(d);
    let aligned = bh.is_multiple_of(d) && bw.is_multiple_of(d);
    if !seg.tileable || !four || !aligned || bh == 0 || (core >= bh && core >= bw) {
        let data: Vec<Cow<[f32]>> = views.iter().map(whole).collect();
        let inputs = whole_inputs(&seg.inputs, &views, &data).collect();
        let got = run(session, inputs, &outs).map_err(run_err("tiled VAE"))?;
        return Ok(got
            .into_iter()
            .map(|(shape, data)| Host { shape, data })
            .collect());
    }
    // Each input's size in units of the smallest (an upsampled residual is 2, ...).
    let ratios: Vec<usize> = ins
        .iter()
        .map(|t| {
            let r = t.shape[2] / bh;
            if r * bh == t.shape[2] && r * bw == t.shape[3] {
                Ok(r)
            } else {
                Err(PipelineError::Job(format!(
                    "tiled VAE: segment inputs of sizes {:?} and {bh}×{bw} do not tile together",
                    t.shape
                )))
            }
        })
        .collect::<Result<_, _>>()?;
    let mut full: Vec<Option<Host>> = (0..outs.len()).map(|_| None).collect();
    let mut crops: Vec<Vec<f32>> = vec![Vec::new(); ins.len()];
    for wy in windows(bh, core, halo) {
        for wx in windows(bw, core, halo) {
            for ((v, r), crop) in views.iter().zip(&ratios).zip(crops.iter_mut()) {
                crop_into(
                    v.host,
                    wy.start * r,
                    wy.len * r,
                    wx.start * r,
                    wx.len * r,
                    crop,
                );
                if let Some((a, b)) = v.affine {
                    apply_affine(crop, a, b);
                }
            }
            let inputs = seg
                .inputs
                .iter()
                .zip(ins.iter().zip(&ratios).zip(&crops))
                .map(|(n, ((t, r), c))| {
                    Input::F32(n, vec![1, t.shape[1], wy.len * r, wx.len * r], c)
                })
                .collect();
            let got = run(session, inputs, &outs).map_err(run_err("tiled VAE"))?;
            for ((shape, data), dst) in got.into_iter().zip(full.iter_mut()) {
                let (c, th, tw) = match shape.as_slice() {
                    &[1, c, th, tw] if th > 0 && tw > 0 => (c, th, tw),
                    s => {
                        return Err(PipelineError::Job(format!(
                            "tiled VAE: a segment gave a {s:?} tile"
                        )))
                    }
                };
                // The output's size over the input's: an upsampling or a downsampling.
                let q = if th >= wy.len {
                    Ratio(th / wy.len, 1)
                } else {
                    Ratio(1, wy.len / th)
                };
                if q.of(wy.len) != th || q.of(wx.len) != tw || !d.is_multiple_of(q.1) {
                    return Err(PipelineError::Job(format!(
                        "tiled VAE: a {}×{} tile gave a {th}×{tw} output",
                        wy.len, wx.len
                    )));
                }
                let dst = dst.get_or_insert_with(|| Host {
                    shape: vec![1, c, q.of(bh), q.of(bw)],
                    data: vec![0.0; c * q.of(bh) * q.of(bw)],
                });
                paste(&data, &shape, &wy, &wx, q, dst);
            }
        }
    }
    full.into_iter()
        .map(|t| t.ok_or_else(|| missing("a tiled segment output")))
        .collect()
}

/// One tile along an axis: the core `[core0, core1)` it writes and the window `[start, start +
/// len)` it reads, in pixels of the segment's input resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub core0: usize,
    pub core1: usize,
    pub start: usize,
    pub len: usize,
}

/// Tiles along an axis of `n` pixels: cores of `core` pixels (the last one shorter) in windows
/// of one size, `core + 2 × halo` (or `n`), shifted inside the picture; each core keeps `halo`
/// pixels of context on both sides unless it touches the picture's edge, where the untiled graph
/// pads as the tile does.
pub fn windows(n: usize, core: usize, halo: usize) -> Vec<Window> {
    let core = core.max(1);
    let len = (core + 2 * halo).min(n);
    (0..n)
        .step_by(core)
        .map(|c0| Window {
            core0: c0,
            core1: (c0 + core).min(n),
            start: c0.saturating_sub(halo).min(n - len),
            len,
        })
        .collect()
}

/// Copies `[y0, y0 + hh) × [x0, x0 + ww)` of every channel of `t` into `out`.
fn crop_into(t: &Host, y0: usize, hh: usize, x0: usize, ww: usize, out: &mut Vec<f32>) {
    let (c, th, tw) = (t.shape[1], t.shape[2], t.shape[3]);
    out.clear();
    out.reserve(c * hh * ww);
    for ch in 0..c {
        for y in y0..y0 + hh {
            let row = ch * th * tw + y * tw + x0;
            out.extend_from_slice(&t.data[row..row + ww]);
        }
    }
}

/// A size ratio `.0 / .1` (an upsampling by 2 is 2/1, a stride-2 convolution 1/2).
#[derive(Debug, Clone, Copy)]
struct Ratio(usize, usize);

impl Ratio {
    fn of(self, n: usize) -> usize {
        n * self.0 / self.1
    }
}

/// Writes the core of a tile's output (`data`, `shape`; `q` times the tile's size) into `dst`.
fn paste(data: &[f32], shape: &[usize], wy: &Window, wx: &Window, q: Ratio, dst: &mut Host) {
    let (c, th, tw) = (shape[1], shape[2], shape[3]);
    let (dh, dw) = (dst.shape[2], dst.shape[3]);
    let (ty0, ty1) = (q.of(wy.core0 - wy.start), q.of(wy.core1 - wy.start));
    let (tx0, tx1) = (q.of(wx.core0 - wx.start), q.of(wx.core1 - wx.start));
    let (y0, x0) = (q.of(wy.start), q.of(wx.start));
    for ch in 0..c {
        for ty in ty0..ty1 {
            let src = ch * th * tw + ty * tw;
            let d = ch * dh * dw + (y0 + ty) * dw + x0;
            dst.data[d + tx0..d + tx1].copy_from_slice(&data[src + tx0..src + tx1]);
        }
    }
}

/// The per-channel affine `x · a + b` that applies `norm` to the whole of `t`: per group, mean
/// and biased variance over its channels and pixels (in f64), with γ and β.
fn group_affine(
    t: &Host,
    norm: &Norm,
    gamma: &[f32],
    beta: &[f32],
) -> Result<(Vec<f32>, Vec<f32>), PipelineError> {
    let c = t.shape.get(1).copied().unwrap_or(0);
    let pixels: usize = t.shape.iter().skip(2).product();
    if t.shape.first() != Some(&1)
        || c == 0
        || !c.is_multiple_of(norm.groups)
        || gamma.len() != c
        || beta.len() != c
        || t.data.len() != c * pixels
    {
        return Err(PipelineError::Job(format!(
            "tiled VAE: GroupNorm of {} groups on a {:?} tensor",
            norm.groups, t.shape
        )));
    }
    let per = c / norm.groups;
    let eps = f64::from(norm.eps);
    let stats: Vec<(f64, f64)> = t
        .data
        .par_chunks(per * pixels)
        .map(|block| {
            let n = block.len() as f64;
            let mean = block.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let var = block
                .iter()
                .map(|&x| (f64::from(x) - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, 1.0 / (var + eps).sqrt())
        })
        .collect();
    let (mut a, mut b) = (Vec::with_capacity(c), Vec::with_capacity(c));
    for ch in 0..c {
        let (mean, inv) = stats[ch / per];
        let s = inv * f64::from(gamma[ch]);
        a.push(s as f32);
        b.push((f64::from(beta[ch]) - mean * s) as f32);
    }
    Ok((a, b))
}

/// `x · a[c] + b[c]` over `data`, channel-major (`a.len()` channels of equal size).
fn apply_affine(data: &mut [f32], a: &[f32], b: &[f32]) {
    let plane = data.len() / a.len().max(1);
    data.par_chunks_mut(plane.max(1))
        .zip(a.par_iter().zip(b.par_iter()))
        .for_each(|(chan, (&a, &b))| {
            for x in chan {
                *x = *x * a + b;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tiles_only_large_latents() {
        let t = VaeTiling {
            mode: TileMode::Auto,
            ..VaeTiling::default()
        };
        assert!(!t.applies(64, 64));
        assert!(t.applies(160, 160));
        assert!(!VaeTiling::default().applies(1000, 1000));
        let on = VaeTiling {
            mode: TileMode::On,
            ..t
        };
        assert!(on.applies(96, 64) && !on.applies(64, 64));
        let off = VaeTiling {
            mode: TileMode::Off,
            ..t
        };
        assert!(!off.applies(1000, 1000));
    }

    /// Every pixel in exactly one core; every window inside the picture, of one size, with `halo`
    /// pixels of context around its core or the picture's edge.
    #[test]
    fn windows_cover_once_with_context() {
        for n in 1..40 {
            for core in 1..12 {
                for halo in 0..5 {
                    let ws = windows(n, core, halo);
                    let mut seen = vec![0; n];
                    for w in &ws {
                        assert_eq!(w.len, (core + 2 * halo).min(n));
                        assert!(w.start + w.len <= n);
                        assert!(w.start <= w.core0 && w.core1 <= w.start + w.len);
                        assert!(
                            w.core0 - w.start >= halo || w.start == 0,
                            "{n} {core} {halo} {w:?}"
                        );
                        assert!(
                            w.start + w.len - w.core1 >= halo || w.start + w.len == n,
                            "{n} {core} {halo} {w:?}"
                        );
                        for s in &mut seen[w.core0..w.core1] {
                            *s += 1;
                        }
                    }
                    assert!(seen.iter().all(|&s| s == 1));
                }
            }
        }
    }

    /// The synthetic attention graph of [`vae_cut::synthetic`] (10 query pixels, 6 channels) run
    /// through the split in chunks of 1, 4 (4 + 4 + 2) and 100 rows, against the attention
    /// computed directly in f64: a chunk's rows in the wrong place or a chunk missing would show.
    /// A Softmax the split does not know runs whole, and right.
    #[test]
    fn chunked_attention_matches_a_direct_computation() {
        use crate::model::vae_cut::synthetic;
        let rt = Runtime::get(None, false).expect("ONNX Runtime (run scripts/setup)");
        let (n, c) = (10, 6);
        let w = synthetic::Weights::new(c);
        let x: Vec<f32> = (0..n * c)
            .map(|i| ((i * 37 % 23) as f32 / 11.0 - 1.0) * 0.8)
            .collect();
        let want = synthetic::reference(&w, &x, n);
        let weights: Arc<[u8]> = Arc::from(vec![0u8; 4]);
        for (twice, tile, chunks) in [(false, 1, 10), (false, 2, 3), (false, 10, 1), (true, 2, 0)] {
            let graph = synthetic::graph(&w, Some(-1), twice);
            let opts = SessionOptions::default();
            let mut t =
                Tiled::build(rt, &opts, "test", &graph, "w.bin", Arc::clone(&weights)).unwrap();
            let input = Host {
                shape: vec![1, n, c],
                data: x.clone(),
            };
            let got = t.run(input, n, tile).unwrap();
            assert_eq!(got.shape, vec![1, n, c]);
            assert_eq!(t.chunks, chunks, "tile {tile}");
            // The probabilities' mean over the keys, added when `twice`.
            let extra = if twice { 1.0 / n as f64 } else { 0.0 };
            for (i, (g, w)) in got.data.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w - extra).abs() < 1e-5,
                    "tile {tile}, value {i}: {g} vs {}",
                    w + extra
                );
            }
        }
    }

    /// torch.nn.GroupNorm(2, 4, eps=1e-6) with weight [1, 2, 1, 1] and bias [0, 0, 0, 1] on
    /// channels [0, 2], [1, 3], [4, 4], [0, 8] (one row of two pixels each): group 1 is
    /// [0, 2, 1, 3] (mean 1.5, var 1.25), group 2 is [4, 4, 0, 8] (mean 4, var 8).
    #[test]
    fn group_norm_matches_torch() {
        let mut t = Host {
            shape: vec![1, 4, 1, 2],
            data: vec![0.0, 2.0, 1.0, 3.0, 4.0, 4.0, 0.0, 8.0],
        };
        let norm = Norm {
            x: "x".into(),
            y: "y".into(),
            groups: 2,
            eps: 1e-6,
            gamma: Param::Values(vec![]),
            beta: Param::Values(vec![]),
        };
        let (a, b) = group_affine(&t, &norm, &[1.0, 2.0, 1.0, 1.0], &[0.0, 0.0, 0.0, 1.0]).unwrap();
        apply_affine(&mut t.data, &a, &b);
        // torch's output, printed to four places.
        let want = [-1.3416, 0.4472, -0.8944, 2.6833, 0.0, 0.0, -0.4142, 2.4142];
        for (g, w) in t.data.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{:?}", t.data);
        }
    }
}
