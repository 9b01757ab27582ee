//! Which strength applies to a parameter: text encoder, or the UNet's in / mid / out region.
//!
//! `in` = `down_blocks.*` plus `conv_in`, `time_embedding`, `add_embedding` (they feed the down path);
//! `mid` = `mid_block.*`; `out` = `up_blocks.*` plus `conv_norm_out`, `conv_out`. SD.Next counts the
//! output convolutions as "in" (sdnext-lora.md §2.1); we put them where they act, after the up path.

use serde::Serialize;

use super::TargetComponent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Region {
    TextEncoder,
    In,
    Mid,
    Out,
}

pub fn region(component: TargetComponent, name: &str) -> Region {
    match component {
        TargetComponent::TextEncoder | TargetComponent::TextEncoder2 => Region::TextEncoder,
        TargetComponent::Unet => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        let r = |n| region(TargetComponent::Unet, n);
        assert_eq!(r("down_blocks.1.attentions.0.proj_in.weight"), Region::In);
        assert_eq!(r("conv_in.weight"), Region::In);
        assert_eq!(r("time_embedding.linear_1.weight"), Region::In);
        assert_eq!(r("mid_block.resnets.0.conv1.weight"), Region::Mid);
        assert_eq!(r("up_blocks.0.upsamplers.0.conv.weight"), Region::Out);
        assert_eq!(r("conv_out.weight"), Region::Out);
        assert_eq!(r("conv_norm_out.bias"), Region::Out);
        assert_eq!(
            region(
                TargetComponent::TextEncoder2,
                "text_model.final_layer_norm.weight"
            ),
            Region::TextEncoder
        );
    }
}
