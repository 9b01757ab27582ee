//! ΔW per module type, one file per type, all f32 in torch layout.
//!
//! Linear types return `μ·ΔW`; the weight-dependent ones (DoRA, OFT, BOFT) take μ inside as LyCORIS does.

use thiserror::Error;

use super::detect::{AdapterType, Detected, ModuleTensors};
use super::keys::Kind;
use super::tensor::Tensor;

pub mod dora;
pub mod full;
pub mod glora;
pub mod ia3;
pub mod loha;
pub mod lokr;
pub mod lora;
pub mod norm;
pub mod oft;

#[derive(Debug, Error, PartialEq)]
pub enum DeltaError {
    #[error("the adapter's {what} has shape {got:?}, which does not fit the model's {want:?}")]
    Shape {
        what: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("missing tensor {0:?}")]
    Missing(Kind),
    #[error("this type needs the base weight, which the model did not provide")]
    NoBase,
    #[error("{0}")]
    Invalid(String),
}

/// What a module's computation sees.
pub struct Ctx<'a> {
    pub t: &'a ModuleTensors,
    /// Shape of the target weight (torch layout).
    pub shape: &'a [usize],
    /// Shape of the target bias, when the model has one.
    pub bias_shape: Option<&'a [usize]>,
    /// Base weight, f32, when the model can give it (needed by DoRA, OFT, BOFT, GLoRA, IA3).
    pub base: Option<&'a [f32]>,
    pub mu: f32,
    pub dyn_rank: Option<usize>,
}

impl Ctx<'_> {
    pub fn get(&self, k: Kind) -> Result<&Tensor, DeltaError> {
        self.t.get(k).ok_or(DeltaError::Missing(k))
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn base(&self) -> Result<&[f32], DeltaError> {
        let b = self.base.ok_or(DeltaError::NoBase)?;
        if b.len() != self.numel() {
            return Err(DeltaError::Invalid(format!(
                "base weight has {} values, expected {} for {:?}",
                b.len(),
                self.numel(),
                self.shape
            )));
        }
        Ok(b)
    }
    /// `alpha / rank`, 1 when alpha is absent (R3); `{m}.scale` overrides it (sd.cpp, A1111).
    pub fn scale(&self, rank: usize) -> f32 {
        if let Some(s) = self.t.get(Kind::Scale).and_then(Tensor::scalar) {
            return s;
        }
        match self.t.get(Kind::Alpha).and_then(Tensor::scalar) {
            Some(a) if rank > 0 => a / rank as f32,
            _ => 1.0,
        }
    }
    /// Checks that `n` values can be reshaped onto the target weight (R5).
    pub fn fits(&self, what: &str, got: &[usize], n: usize) -> Result<(), DeltaError> {
        if n == self.numel() {
            Ok(())
        } else {
            Err(DeltaError::Shape {
                what: what.into(),
                got: got.to_vec(),
                want: self.shape.to_vec(),
            })
        }
    }
}

/// A module's result: the weight delta and possibly a bias delta, already multiplied by strength.
#[derive(Debug, Default)]
pub struct Out {
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

fn scaled(mut v: Vec<f32>, k: f32) -> Vec<f32> {
    if k != 1.0 {
        v.iter_mut().for_each(|x| *x *= k);
    }
    v
}

/// Computes one module's contribution at strength `ctx.mu`.
pub fn compute(det: Detected, ctx: &Ctx) -> Result<Out, DeltaError> {
    // The additive types give s·ΔW; DoRA wraps them, everything else is linear in μ.
    let additive = match det.kind {
        AdapterType::Lora => Some(lora::delta(ctx)?),
        AdapterType::LoHa => Some(loha::delta(ctx)?),
        AdapterType::LoKr => Some(lokr::delta(ctx)?),
        _ => None,
    };
    if let Some(d) = additive {
        let weight = if det.dora {
            dora::apply(ctx, d)?
        } else {
            scaled(d, ctx.mu)
        };
        return Ok(Out {
            weight: Some(weight),
            bias: None,
        });
    }
    Ok(match det.kind {
        AdapterType::Glora => Out {
            weight: Some(scaled(glora::delta(ctx)?, ctx.mu)),
            bias: None,
        },
        AdapterType::DiagOft => Out {
            weight: Some(oft::diag(ctx)?),
            bias: None,
        },
        AdapterType::Boft => Out {
            weight: Some(oft::butterfly(ctx)?),
            bias: None,
        },
        AdapterType::Ia3 => Out {
            weight: Some(scaled(ia3::delta(ctx)?, ctx.mu)),
            bias: None,
        },
        AdapterType::Full => {
            let (w, b) = full::delta(ctx)?;
            Out {
                weight: w.map(|w| scaled(w, ctx.mu)),
                bias: b.map(|b| scaled(b, ctx.mu)),
            }
        }
        AdapterType::Norm => {
            let (w, b) = norm::delta(ctx)?;
            Out {
                weight: w.map(|w| scaled(w, ctx.mu)),
                bias: b.map(|b| scaled(b, ctx.mu)),
            }
        }
        AdapterType::Lora | AdapterType::LoHa | AdapterType::LoKr => Out::default(),
    })
}
