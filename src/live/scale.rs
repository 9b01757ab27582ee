//! Per-rank scale vectors `s` of the live branches at one step: each adapter's ranks get its strength
//! for that layer (te/in/mid/out region, lbw block weight) times its alpha/rank, exactly the factor
//! the fuse path multiplies ΔW by.

use super::factors::Factors;
use super::strengths::{strengths_of, ActiveLora, StrengthKey};
use crate::lora::TargetComponent;

/// One `s` vector per layer of `factors` (same order), for `key`'s strengths.
pub fn scales(factors: &Factors, loras: &[ActiveLora], key: &StrengthKey) -> Vec<Vec<f32>> {
    let strengths: Vec<_> = (0..loras.len())
        .map(|i| strengths_of(&loras[i], key, i))
        .collect();
    factors
        .layers
        .iter()
        .map(|l| {
            let mut s = vec![0f32; l.rank];
            for seg in &l.segments {
                let mu = strengths
                    .get(seg.adapter)
                    .map_or(0.0, |st| st.for_param(TargetComponent::Unet, &l.param));
                s[seg.start..seg.start + seg.len].fill(mu * seg.scale);
            }
            s
        })
        .collect()
}
