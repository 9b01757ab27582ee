//! Strength changes through the patch program a resident component already runs: [`slots`] maps a
//! [`StrengthKey`] to that program's strengths input when it was planned for the same adapter set
//! and every term whose strength changes scales with it; otherwise a new program is needed.

use super::adapters::{strengths_of, ActiveLora, StrengthKey};
use super::device_run::DeviceStaged;
use super::keys::FusedAdapter;
use crate::lora::TargetComponent;

/// The strengths input that brings `prog` (run on `component`) to `key`'s strengths of `loras`,
/// whose adapter set is `set` ([`super::keys::adapter_set`]); None when a new program is needed:
/// another adapter set, a term of unknown origin, or a term that holds its strength (DoRA, OFT,
/// BOFT) at a strength that changes.
pub(crate) fn slots(
    prog: &DeviceStaged,
    set: &[FusedAdapter],
    loras: &[ActiveLora],
    key: &StrengthKey,
    component: TargetComponent,
) -> Option<Vec<f32>> {
    if prog.adapters.as_deref() != Some(set)
        || key.te.len() != loras.len()
        || key.unet.len() != loras.len()
    {
        return None;
    }
    let strengths: Vec<_> = (0..loras.len())
        .map(|i| strengths_of(&loras[i], key, i))
        .collect();
    let mut out = Vec::with_capacity(prog.strengths.len());
    for t in &prog.terms {
        let o = t.origin.as_ref()?;
        // The same lookup the plan made for the term's strength (region × block weight).
        let s = strengths.get(o.adapter)?.for_param(component, &o.at);
        if t.linear {
            out.push(s);
        } else if s.to_bits() != t.strength.to_bits() {
            return None;
        }
    }
    (out.len() == prog.strengths.len()).then_some(out)
}
