//! transformers CLIP names → the names single-file checkpoints keep text encoders under:
//! transformers' own (with or without `text_model.`) and OpenCLIP's.

use super::unet::num_after;
use crate::model::checkpoint::Source;

/// CLIP-L candidates: the name itself, then without the `text_model.` level (the layout older
/// SD1 files and transformers 5.x write).
pub fn clip_l(name: &str) -> Vec<String> {
    let mut out = vec![name.to_string()];
    if let Some(rest) = name.strip_prefix("text_model.") {
        out.push(rest.to_string());
    }
    out
}

/// Where OpenCLIP keeps a diffusers `CLIPTextModel(WithProjection)` parameter of shape `shape`.
pub fn open_clip(name: &str, shape: &[usize]) -> Option<Source> {
    let whole = |key: String| Some(Source::Whole { key });
    if name == "text_projection.weight" {
        return Some(Source::Transposed {
            key: "text_projection".into(),
        });
    }
    let rest = name.strip_prefix("text_model.")?;
    match rest {
        "embeddings.token_embedding.weight" => return whole("token_embedding.weight".into()),
        "embeddings.position_embedding.weight" => return whole("positional_embedding".into()),
        _ => {}
    }
    if let Some(leaf) = rest.strip_prefix("final_layer_norm.") {
        return whole(format!("ln_final.{leaf}"));
    }
    let (i, t) = num_after(rest, "encoder.layers.")?;
    let block = format!("transformer.resblocks.{i}");
    for (part, idx) in [("q_proj.", 0), ("k_proj.", 1), ("v_proj.", 2)] {
        if let Some(leaf) = t
            .strip_prefix("self_attn.")
            .and_then(|t| t.strip_prefix(part))
        {
            let rows = *shape.first()?;
            return Some(Source::Rows {
                key: format!("{block}.attn.in_proj_{leaf}"),
                start: idx * rows,
                end: (idx + 1) * rows,
            });
        }
    }
    const MAP: [(&str, &str); 5] = [
        ("self_attn.out_proj.", "attn.out_proj."),
        ("layer_norm1.", "ln_1."),
        ("layer_norm2.", "ln_2."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
    ];
    MAP.iter()
        .find_map(|(d, o)| t.strip_prefix(d).map(|leaf| format!("{block}.{o}{leaf}")))
        .and_then(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clip_names() {
        assert_eq!(
            open_clip(
                "text_model.encoder.layers.3.self_attn.k_proj.weight",
                &[1280, 1280]
            ),
            Some(Source::Rows {
                key: "transformer.resblocks.3.attn.in_proj_weight".into(),
                start: 1280,
                end: 2560
            })
        );
        assert_eq!(
            open_clip("text_model.encoder.layers.0.self_attn.v_proj.bias", &[64]),
            Some(Source::Rows {
                key: "transformer.resblocks.0.attn.in_proj_bias".into(),
                start: 128,
                end: 192
            })
        );
        assert_eq!(
            open_clip("text_model.encoder.layers.31.mlp.fc2.bias", &[1280]),
            Some(Source::Whole {
                key: "transformer.resblocks.31.mlp.c_proj.bias".into()
            })
        );
        assert_eq!(
            open_clip(
                "text_model.embeddings.position_embedding.weight",
                &[77, 1280]
            ),
            Some(Source::Whole {
                key: "positional_embedding".into()
            })
        );
        assert_eq!(
            open_clip("text_projection.weight", &[1280, 1280]),
            Some(Source::Transposed {
                key: "text_projection".into()
            })
        );
        assert_eq!(open_clip("logit_scale", &[]), None);
    }

    #[test]
    fn clip_l_layouts() {
        assert_eq!(
            clip_l("text_model.final_layer_norm.weight"),
            [
                "text_model.final_layer_norm.weight",
                "final_layer_norm.weight"
            ]
        );
    }
}
