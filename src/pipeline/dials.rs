//! [`Dials`]: strength changes from a front end, read by the running job at every step. The engine
//! handle writes them, the generator's live stepping reads them.

use crate::prompt::Component as Part;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Strength changes from a front end, read by the running job at every step. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Dials(Arc<Mutex<HashMap<String, [Option<f32>; 4]>>>);

impl Dials {
    /// Sets adapter `name`'s `part` (te, unet = in+mid+out, in, mid, out) to `value`, overriding
    /// the prompt's strength or schedule until [`clear`](Self::clear).
    pub fn set(&self, name: &str, part: Part, value: f32) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = m.entry(name.to_string()).or_default();
        match part {
            Part::Te => slot[0] = Some(value),
            Part::Unet => {
                slot[1] = Some(value);
                slot[2] = Some(value);
                slot[3] = Some(value);
            }
            Part::In => slot[1] = Some(value),
            Part::Mid => slot[2] = Some(value),
            Part::Out => slot[3] = Some(value),
        }
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// True when a front end has dialled `name` (it then runs live, so later changes are free).
    pub fn dialled(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// Applies the overrides to adapter `i` named `name` of `key`.
    pub fn apply(&self, name: &str, te: &mut f32, unet: &mut [f32; 3]) {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = m.get(name) {
            if let Some(v) = slot[0] {
                *te = v;
            }
            for (dst, src) in unet.iter_mut().zip(&slot[1..]) {
                if let Some(v) = src {
                    *dst = *v;
                }
            }
        }
    }
}
