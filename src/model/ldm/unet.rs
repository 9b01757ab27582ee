//! diffusers ↔ LDM (`input_blocks.N.M`) UNet module names, computed from the UNet's own parameter names.
//!
//! Levels, layers per block and which up levels have attention are read off the names, so the map is
//! right for SD1/SD2/SDXL and for the tiny test UNet alike.

use std::collections::BTreeSet;

/// The block structure of a diffusers UNet, inferred from its parameter names.
#[derive(Debug, Clone, Default)]
pub struct UnetLayout {
    pub layers_per_block: usize,
    pub up_levels_with_attention: BTreeSet<usize>,
}

pub(super) fn num_after(s: &str, prefix: &str) -> Option<(usize, String)> {
    let rest = s.strip_prefix(prefix)?;
    let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
    Some((n.parse().ok()?, tail.to_string()))
}

impl UnetLayout {
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> UnetLayout {
        let mut lpb = 0;
        let mut up_attn = BTreeSet::new();
        for n in names {
            if let Some((_, t)) = num_after(n, "down_blocks.") {
                if let Some((j, _)) = num_after(&t, "resnets.") {
                    lpb = lpb.max(j + 1);
                }
            }
            if let Some((x, t)) = num_after(n, "up_blocks.") {
                if t.starts_with("attentions.") {
                    up_attn.insert(x);
                }
            }
        }
        UnetLayout {
            layers_per_block: lpb,
            up_levels_with_attention: up_attn,
        }
    }

    /// LDM name of a diffusers UNet module path or parameter name (the leaf passes through), or
    /// None when it has no LDM counterpart.
    pub fn to_ldm(&self, p: &str) -> Option<String> {
        let lpb = self.layers_per_block;
        if let Some((x, t)) = num_after(p, "down_blocks.") {
            if let Some((j, rest)) = num_after(&t, "resnets.") {
                return Some(join(
                    format!("input_blocks.{}.0", 1 + x * (lpb + 1) + j),
                    &resnet_inner(&rest),
                ));
            }
            if let Some((j, rest)) = num_after(&t, "attentions.") {
                return Some(join(
                    format!("input_blocks.{}.1", 1 + x * (lpb + 1) + j),
                    &rest,
                ));
            }
            if let Some(rest) = t.strip_prefix("downsamplers.0.conv") {
                return Some(format!(
                    "input_blocks.{}.0.op{rest}",
                    1 + x * (lpb + 1) + lpb
                ));
            }
            return None;
        }
        if let Some(t) = p.strip_prefix("mid_block.") {
            if let Some((j, rest)) = num_after(t, "resnets.") {
                return Some(join(
                    format!("middle_block.{}", 2 * j),
                    &resnet_inner(&rest),
                ));
            }
            if let Some(rest) = t.strip_prefix("attentions.0") {
                return Some(format!("middle_block.1{rest}"));
            }
            return None;
        }
        if let Some((x, t)) = num_after(p, "up_blocks.") {
            if let Some((j, rest)) = num_after(&t, "resnets.") {
                return Some(join(
                    format!("output_blocks.{}.0", x * (lpb + 1) + j),
                    &resnet_inner(&rest),
                ));
            }
            if let Some((j, rest)) = num_after(&t, "attentions.") {
                return Some(join(
                    format!("output_blocks.{}.1", x * (lpb + 1) + j),
                    &rest,
                ));
            }
            if let Some(rest) = t.strip_prefix("upsamplers.0.conv") {
                let m = if self.up_levels_with_attention.contains(&x) {
                    2
                } else {
                    1
                };
                return Some(format!(
                    "output_blocks.{}.{m}.conv{rest}",
                    x * (lpb + 1) + lpb
                ));
            }
            return None;
        }
        const TOP: [(&str, &str); 7] = [
            ("conv_in", "input_blocks.0.0"),
            ("time_embedding.linear_1", "time_embed.0"),
            ("time_embedding.linear_2", "time_embed.2"),
            ("add_embedding.linear_1", "label_emb.0.0"),
            ("add_embedding.linear_2", "label_emb.0.2"),
            ("conv_norm_out", "out.0"),
            ("conv_out", "out.2"),
        ];
        for (d, l) in TOP {
            if let Some(rest) = p.strip_prefix(d) {
                if rest.is_empty() || rest.starts_with('.') {
                    return Some(format!("{l}{rest}"));
                }
            }
        }
        None
    }
}

fn join(head: String, tail: &str) -> String {
    if tail.is_empty() {
        head
    } else {
        format!("{head}.{tail}")
    }
}

fn resnet_inner(rest: &str) -> String {
    let (head, tail) = rest.split_once('.').unwrap_or((rest, ""));
    let h = match head {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        other => other,
    };
    join(h.to_string(), tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD1.5's real layout.
    #[test]
    fn sd15_examples() {
        let names = [
            "down_blocks.0.resnets.1.conv1.weight",
            "up_blocks.1.attentions.0.proj_in.weight",
            "up_blocks.2.attentions.0.proj_in.weight",
            "up_blocks.3.attentions.0.proj_in.weight",
        ];
        let l = UnetLayout::from_names(names);
        assert_eq!(
            l.to_ldm("down_blocks.1.attentions.0.proj_in").as_deref(),
            Some("input_blocks.4.1.proj_in")
        );
        assert_eq!(
            l.to_ldm("up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")
                .as_deref(),
            Some("output_blocks.3.1.transformer_blocks.0.attn2.to_k")
        );
        assert_eq!(
            l.to_ldm("up_blocks.0.upsamplers.0.conv").as_deref(),
            Some("output_blocks.2.1.conv")
        );
        assert_eq!(
            l.to_ldm("up_blocks.1.upsamplers.0.conv").as_deref(),
            Some("output_blocks.5.2.conv")
        );
        assert_eq!(
            l.to_ldm("down_blocks.2.downsamplers.0.conv").as_deref(),
            Some("input_blocks.9.0.op")
        );
        assert_eq!(
            l.to_ldm("mid_block.resnets.1.time_emb_proj").as_deref(),
            Some("middle_block.2.emb_layers.1")
        );
        assert_eq!(l.to_ldm("conv_out").as_deref(), Some("out.2"));
    }

    /// SDXL's real layout (three levels, attention at 1 and 2, up levels 0 and 1; 10 transformer
    /// blocks at the deepest level, which pass through as inner names).
    #[test]
    fn sdxl_examples() {
        let names = [
            "down_blocks.0.resnets.1.conv1.weight",
            "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.weight",
            "up_blocks.0.attentions.2.proj_in.weight",
            "up_blocks.1.attentions.2.proj_in.weight",
            "up_blocks.2.resnets.2.conv2.weight",
        ];
        let l = UnetLayout::from_names(names);
        let cases = [
            (
                "down_blocks.2.attentions.0.transformer_blocks.9.ff.net.2",
                "input_blocks.7.1.transformer_blocks.9.ff.net.2",
            ),
            (
                "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k",
                "input_blocks.5.1.transformer_blocks.1.attn2.to_k",
            ),
            ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
            (
                "mid_block.attentions.0.transformer_blocks.9.attn1.to_q",
                "middle_block.1.transformer_blocks.9.attn1.to_q",
            ),
            (
                "up_blocks.0.attentions.1.proj_out",
                "output_blocks.1.1.proj_out",
            ),
            ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
            ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
            (
                "up_blocks.2.resnets.2.conv_shortcut",
                "output_blocks.8.0.skip_connection",
            ),
            ("add_embedding.linear_1", "label_emb.0.0"),
        ];
        for (d, want) in cases {
            assert_eq!(l.to_ldm(d).as_deref(), Some(want), "{d}");
        }
    }
}
