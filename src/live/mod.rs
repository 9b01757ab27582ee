//! Live adapters: strengths that change while sampling without a session rebuild. The UNet graph gets
//! low-rank branches once per set of live layers ([`rewrite`]); the factors come from the adapters
//! ([`factors`]); per step only the per-rank scales change ([`scale`]). The strengths of a prompt's adapters at a
//! step ([`strengths`]) are shared with the fused path.

pub mod factors;
pub mod rewrite;
pub mod scale;
pub mod strengths;

use crate::model::layout::ComponentKind;
use crate::model::Model;
use crate::patch;
use crate::runtime::tensor_io::{input_is_f16, run_with, to_f16, Input};
use crate::runtime::{build_session, Runtime, SessionOptions};
use factors::Factors;
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use std::collections::HashMap;

pub use factors::{Approximation, LayerFactors};

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("live mode: {0}")]
    Adapter(String),
    #[error("live mode: rewriting the UNet graph: {0}")]
    Graph(String),
    #[error("live mode: {0}")]
    Build(String),
    #[error("live mode: UNet: {0}")]
    Run(String),
}

/// How adapters reach the weights.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LoraMethod {
    /// Static adapters are fused; one with a UNet schedule, or dialled by a front end, runs live.
    #[default]
    Fuse,
    /// Every adapter runs live on the UNet (the text encoder is re-fused per distinct strength).
    Live,
    /// Everything is fused and re-fused whenever a step's strengths differ: exact, but a session
    /// rebuild per change (the slow reference path).
    Refuse,
}

/// Options of live mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveOptions {
    /// Largest relative Frobenius error of an SVD truncation (types that are not low-rank).
    pub svd_max_error: f32,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            svd_max_error: 0.01,
        }
    }
}

/// The live UNet: a session of the rewritten graph and the factor values it is fed every step.
pub struct LiveUnet {
    session: Session,
    pub factors: Factors,
    values: Vec<(String, DynValue)>,
    /// Seconds spent building the session (graph rewrite, weights, ONNX Runtime).
    pub build_s: f64,
}

/// The branch layers of `factors` as the graph names them.
fn layers(model: &Model, factors: &Factors) -> Result<Vec<rewrite::LiveLayer>, LiveError> {
    let c = model
        .component(ComponentKind::Unet)
        .ok_or_else(|| LiveError::Build("the model has no UNet".into()))?;
    factors
        .layers
        .iter()
        .map(|l| {
            let init = c
                .weightmap
                .initializers
                .iter()
                .find(|e| e.source == l.param)
                .map(|e| e.name.clone())
                .ok_or_else(|| {
                    LiveError::Graph(format!("{} is not a weight of the UNet graph", l.param))
                })?;
            let elem = match c.elem_of(&init) {
                Some(crate::model::graph::ElemType::F16) => 10,
                _ => 1,
            };
            Ok(rewrite::LiveLayer {
                init,
                out_dim: l.out_dim,
                in_dim: l.in_dim,
                kernel: l.kernel,
                elem,
            })
        })
        .collect()
}

/// The branch layers of a set of factors (the parameters they patch): what a live session is
/// built for.
pub fn layer_key(factors: &Factors) -> Vec<String> {
    factors.layers.iter().map(|l| l.param.clone()).collect()
}

impl LiveUnet {
    /// Builds the session: the rewritten graph over the base weights plus `deltas` (the statically
    /// fused adapters), with branches for `factors`' layers.
    pub fn build(
        model: &Model,
        rt: &'static Runtime,
        opts: &SessionOptions,
        deltas: &HashMap<String, Vec<f32>>,
        factors: Factors,
        dims: &[(&str, i64)],
    ) -> Result<LiveUnet, LiveError> {
        let t = std::time::Instant::now();
        let c = model
            .component(ComponentKind::Unet)
            .ok_or_else(|| LiveError::Build("the model has no UNet".into()))?;
        let graph = rewrite::rewrite(&c.graph.bytes, &layers(model, &factors)?)?;
        let (buf, _) = patch::assemble(c, deltas).map_err(|e| LiveError::Build(e.to_string()))?;
        let session = build_session(
            rt,
            "live UNet",
            &graph,
            &c.weightmap.external_file,
            buf,
            opts,
            dims,
            &[],
        )
        .map_err(|e| LiveError::Build(e.to_string()))?;
        let mut live = LiveUnet {
            session,
            factors: Factors::default(),
            values: Vec::new(),
            build_s: 0.0,
        };
        live.set_factors(factors)?;
        live.build_s = t.elapsed().as_secs_f64();
        Ok(live)
    }

    /// New factors for the same layers (other adapters, same targets): no rebuild.
    pub fn set_factors(&mut self, factors: Factors) -> Result<(), LiveError> {
        let mut values = Vec::with_capacity(2 * factors.layers.len());
        for (k, l) in factors.layers.iter().enumerate() {
            let [a, b, _] = rewrite::input_names(k);
            let n_in = l.a.len() / l.rank.max(1);
            let (av, bv, ashape, bshape) = match l.kernel {
                // MatMul wants x·A with A [in, r] and B [r, out]: the factors transposed.
                None => (
                    crate::lora::tensor::transpose(&l.a, l.rank, n_in),
                    crate::lora::tensor::transpose(&l.b, l.out_dim, l.rank),
                    vec![n_in, l.rank],
                    vec![l.rank, l.out_dim],
                ),
                Some([kh, kw]) => (
                    l.a.clone(),
                    l.b.clone(),
                    vec![l.rank, l.in_dim, kh, kw],
                    vec![l.out_dim, l.rank, 1, 1],
                ),
            };
            values.push((a.clone(), self.value(&a, ashape, av)?));
            values.push((b.clone(), self.value(&b, bshape, bv)?));
        }
        self.values = values;
        self.factors = factors;
        Ok(())
    }

    fn value(&self, name: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<DynValue, LiveError> {
        let e = |e: ort::Error| LiveError::Build(e.to_string());
        Ok(if input_is_f16(&self.session, name) {
            Tensor::from_array((shape, to_f16(&data)))
                .map_err(e)?
                .into_dyn()
        } else {
            Tensor::from_array((shape, data)).map_err(e)?.into_dyn()
        })
    }

    /// One UNet evaluation with the branches scaled by `scales` (one vector per layer).
    pub fn run(
        &mut self,
        inputs: Vec<Input<'_>>,
        scales: &[Vec<f32>],
    ) -> Result<Vec<f32>, LiveError> {
        let names: Vec<String> = (0..scales.len())
            .map(|k| rewrite::input_names(k)[2].clone())
            .collect();
        let mut all = inputs;
        for ((k, s), name) in scales.iter().enumerate().zip(&names) {
            let shape = match self.factors.layers[k].kernel {
                None => vec![s.len()],
                Some(_) => vec![1, s.len(), 1, 1],
            };
            all.push(Input::F32(name, shape, s));
        }
        let extra = self
            .values
            .iter()
            .map(|(n, v)| (n.clone(), v.into()))
            .collect();
        let out = run_with(&mut self.session, all, extra, &["out_sample"])
            .map_err(|e| LiveError::Run(e.to_string()))?;
        Ok(out.into_iter().next().map(|(_, d)| d).unwrap_or_default())
    }
}
