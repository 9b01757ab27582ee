//! diffusers `AutoencoderKL` names → LDM VAE names (`encoder.down.0.block.1`, `decoder.up.3...`).

use super::unet::num_after;

/// The decoder's level count: one more than the largest `decoder.up_blocks.N`.
pub fn up_blocks<'a>(names: impl IntoIterator<Item = &'a str>) -> usize {
    names
        .into_iter()
        .filter_map(|n| num_after(n, "decoder.up_blocks.").map(|(i, _)| i + 1))
        .max()
        .unwrap_or(0)
}

/// The LDM name of a diffusers VAE parameter; `up_blocks` is the decoder's level count.
pub fn to_ldm(name: &str, up_blocks: usize) -> Option<String> {
    for top in ["quant_conv.", "post_quant_conv."] {
        if name.starts_with(top) {
            return Some(name.to_string());
        }
    }
    let (half, rest) = name.split_once('.')?;
    if half != "encoder" && half != "decoder" {
        return None;
    }
    let inner = if let Some((i, t)) = num_after(rest, "down_blocks.") {
        level(&format!("down.{i}"), &t, "downsamplers.0.", "downsample.")?
    } else if let Some((i, t)) = num_after(rest, "up_blocks.") {
        let i = up_blocks.checked_sub(i + 1)?;
        level(&format!("up.{i}"), &t, "upsamplers.0.", "upsample.")?
    } else if let Some(t) = rest.strip_prefix("mid_block.") {
        if let Some((j, t)) = num_after(t, "resnets.") {
            format!("mid.block_{}.{}", j + 1, resnet(&t))
        } else {
            format!(
                "mid.attn_1.{}",
                attention(t.strip_prefix("attentions.0.")?)?
            )
        }
    } else if let Some(t) = rest.strip_prefix("conv_norm_out.") {
        format!("norm_out.{t}")
    } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else {
        return None;
    };
    Some(format!("{half}.{inner}"))
}

/// A level's resnets and its down/up sampler.
fn level(head: &str, t: &str, sampler: &str, ldm_sampler: &str) -> Option<String> {
    if let Some((j, t)) = num_after(t, "resnets.") {
        return Some(format!("{head}.block.{j}.{}", resnet(&t)));
    }
    let t = t.strip_prefix(sampler)?;
    Some(format!("{head}.{ldm_sampler}{t}"))
}

fn resnet(t: &str) -> String {
    match t.strip_prefix("conv_shortcut.") {
        Some(leaf) => format!("nin_shortcut.{leaf}"),
        None => t.to_string(),
    }
}

fn attention(t: &str) -> Option<String> {
    const MAP: [(&str, &str); 5] = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ];
    MAP.iter()
        .find_map(|(d, l)| t.strip_prefix(d).map(|leaf| format!("{l}{leaf}")))
}

/// diffusers' own pre-0.14 names of the VAE attention (`query`, `key`, `value`, `proj_attn`), which
/// older Hugging Face folders still carry.
pub fn old_attention_name(name: &str) -> Option<String> {
    const MAP: [(&str, &str); 4] = [
        (".to_q.", ".query."),
        (".to_k.", ".key."),
        (".to_v.", ".value."),
        (".to_out.0.", ".proj_attn."),
    ];
    if !name.contains("mid_block.attentions.") {
        return None;
    }
    MAP.iter()
        .find(|(new, _)| name.contains(new))
        .map(|(new, old)| name.replacen(new, old, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD's VAE (four levels): the decoder's up blocks count down, the encoder's up.
    #[test]
    fn sd_vae_names() {
        let cases = [
            (
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
                "encoder.down.1.block.0.nin_shortcut.weight",
            ),
            (
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
                "encoder.down.2.downsample.conv.bias",
            ),
            (
                "decoder.up_blocks.0.resnets.2.norm1.weight",
                "decoder.up.3.block.2.norm1.weight",
            ),
            (
                "decoder.up_blocks.3.resnets.0.conv2.weight",
                "decoder.up.0.block.0.conv2.weight",
            ),
            (
                "decoder.up_blocks.1.upsamplers.0.conv.weight",
                "decoder.up.2.upsample.conv.weight",
            ),
            (
                "decoder.mid_block.attentions.0.to_out.0.weight",
                "decoder.mid.attn_1.proj_out.weight",
            ),
            (
                "encoder.mid_block.attentions.0.group_norm.bias",
                "encoder.mid.attn_1.norm.bias",
            ),
            (
                "decoder.mid_block.resnets.1.conv1.weight",
                "decoder.mid.block_2.conv1.weight",
            ),
            ("decoder.conv_norm_out.weight", "decoder.norm_out.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
            ("encoder.conv_in.bias", "encoder.conv_in.bias"),
        ];
        for (d, want) in cases {
            assert_eq!(to_ldm(d, 4).as_deref(), Some(want), "{d}");
        }
        assert_eq!(
            to_ldm("decoder.up_blocks.4.resnets.0.conv1.weight", 4),
            None
        );
        assert_eq!(
            old_attention_name("decoder.mid_block.attentions.0.to_v.weight").as_deref(),
            Some("decoder.mid_block.attentions.0.value.weight")
        );
    }
}
