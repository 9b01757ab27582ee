//! Which strength applies to a parameter: text encoder, or the UNet's in / mid / out region.
//!
//! `in` = `down_blocks.*` plus `conv_in`, `time_embedding`, `add_embedding` (they feed the down path);
//! `mid` = `mid_block.*`; `out` = `up_blocks.*` plus `conv_norm_out`, `conv_out`. SD.Next counts the
//! output convolutions as "in" (sdnext-lora.md §2.1); we put them where they act, after the up path.

use serde::Serialize;

use super::Component;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Region {
    TextEncoder,
    In,
    Mid,
    Out,
}

pub fn region(component: Component, name: &str) -> Region {
    match component {
        Component::TextEncoder | Component::TextEncoder2 => Region::TextEncoder,
        Component::Unet => {
            if name.starts_with("mid_block.") {
                Region::Mid
            } else if name.starts_with("up_blocks.")
                || name.starts_with("conv_norm_out")
                || name.starts_with("conv_out")
            {
                Region::Out
            } else {
                Region::In
            }
        }
    }
}
