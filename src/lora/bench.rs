//! A synthetic real-size workload for benchmarks: a kohya LoRA of a given rank over all 192 attention
//! modules of the SD1.5 UNet (16 transformer blocks × 10 + 16 proj_in/proj_out), with SD1.5 shapes.
//!
//! Use: `let w = stipple::lora::bench::sd15_unet_lora(32); stipple::lora::bench::run(&w)?;`
//! For `lora merge`: [`sd15_merge_workload`] (two LoRAs over every UNet and text-encoder layer) and
//! [`run_merge`]; `examples/lora_merge_bench.rs` times it.

use half::f16;

use super::{
    compute_deltas, Adapter, Deltas, LoraError, ModelParams, Strengths, TargetComponent,
    TargetParam,
};

pub struct Workload {
    pub adapter: Adapter,
    pub params: Vec<TargetParam>,
}

fn attention_blocks() -> Vec<(String, usize)> {
    let mut v = Vec::new();
    for (x, c) in [(0usize, 320usize), (1, 640), (2, 1280)] {
        for j in 0..2 {
            v.push((format!("down_blocks.{x}.attentions.{j}"), c));
        }
    }
    v.push(("mid_block.attentions.0".to_string(), 1280));
    for (x, c) in [(1usize, 1280usize), (2, 640), (3, 320)] {
        for j in 0..3 {
            v.push((format!("up_blocks.{x}.attentions.{j}"), c));
        }
    }
    v
}

/// `(module path, target shape)` of every attention-side module of SD1.5.
pub fn sd15_targets() -> Vec<(String, Vec<usize>)> {
    let mut t = Vec::new();
    for (blk, c) in attention_blocks() {
        t.push((format!("{blk}.proj_in"), vec![c, c, 1, 1]));
        t.push((format!("{blk}.proj_out"), vec![c, c, 1, 1]));
        let tb = format!("{blk}.transformer_blocks.0");
        for a in [
            "attn1.to_q",
            "attn1.to_k",
            "attn1.to_v",
            "attn1.to_out.0",
            "attn2.to_q",
            "attn2.to_out.0",
        ] {
            t.push((format!("{tb}.{a}"), vec![c, c]));
        }
        t.push((format!("{tb}.attn2.to_k"), vec![c, 768]));
        t.push((format!("{tb}.attn2.to_v"), vec![c, 768]));
        t.push((format!("{tb}.ff.net.0.proj"), vec![8 * c, c]));
        t.push((format!("{tb}.ff.net.2"), vec![c, 4 * c]));
    }
    t
}

/// Builds the workload in memory (F16 factors, deterministic values).
pub fn sd15_unet_lora(rank: usize) -> Workload {
    let targets: Vec<_> = sd15_targets()
        .into_iter()
        .map(|(p, s)| (TargetComponent::Unet, p, s))
        .collect();
    synth_lora(rank, &targets, 0x2545_f491_4f6c_dd1d)
}

/// Every UNet layer of [`sd15_all_targets`] (attention, resnets, samplers, stem): the design
/// target "ΔW for a rank-32 LoRA over all SD1.5 UNet layers ≤ 1 s on 2 cores" is measured on it.
pub fn sd15_full_unet_lora(rank: usize) -> Workload {
    let targets: Vec<_> = sd15_all_targets()
        .into_iter()
        .filter(|(c, _, _)| *c == TargetComponent::Unet)
        .collect();
    synth_lora(rank, &targets, 0x2545_f491_4f6c_dd1d)
}

/// Every layer a kohya LoCon trains on SD1.5: the attention side ([`sd15_targets`]), the resnets
/// (3×3 convs, shortcuts, time projections), down/upsamplers, and the text encoder's 72 Linear layers.
pub fn sd15_all_targets() -> Vec<(TargetComponent, String, Vec<usize>)> {
    let mut t: Vec<_> = sd15_targets()
        .into_iter()
        .map(|(p, s)| (TargetComponent::Unet, p, s))
        .collect();
    let mut resnet = |blk: String, cin: usize, cout: usize| {
        t.push((
            TargetComponent::Unet,
            format!("{blk}.conv1"),
            vec![cout, cin, 3, 3],
        ));
        t.push((
            TargetComponent::Unet,
            format!("{blk}.conv2"),
            vec![cout, cout, 3, 3],
        ));
        t.push((
            TargetComponent::Unet,
            format!("{blk}.time_emb_proj"),
            vec![cout, 1280],
        ));
        if cin != cout {
            t.push((
                TargetComponent::Unet,
                format!("{blk}.conv_shortcut"),
                vec![cout, cin, 1, 1],
            ));
        }
    };
    let widths = [320usize, 640, 1280, 1280];
    let mut cin = 320;
    for (x, &c) in widths.iter().enumerate() {
        for j in 0..2 {
            resnet(
                format!("down_blocks.{x}.resnets.{j}"),
                if j == 0 { cin } else { c },
                c,
            );
        }
        cin = c;
    }
    for j in 0..2 {
        resnet(format!("mid_block.resnets.{j}"), 1280, 1280);
    }
    // Up path: each resnet takes the previous output plus a skip connection of the down path.
    let skips = [
        320usize, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280,
    ];
    let mut skip = skips.iter().rev();
    let mut prev = 1280;
    for (x, &c) in widths.iter().rev().enumerate() {
        for j in 0..3 {
            let s = skip.next().copied().unwrap_or(c);
            resnet(format!("up_blocks.{x}.resnets.{j}"), prev + s, c);
            prev = c;
        }
    }
    for (x, c) in [(0usize, 320usize), (1, 640), (2, 1280)] {
        t.push((
            TargetComponent::Unet,
            format!("down_blocks.{x}.downsamplers.0.conv"),
            vec![c, c, 3, 3],
        ));
    }
    for (x, c) in [(0usize, 1280usize), (1, 1280), (2, 640)] {
        t.push((
            TargetComponent::Unet,
            format!("up_blocks.{x}.upsamplers.0.conv"),
            vec![c, c, 3, 3],
        ));
    }
    for l in 0..12 {
        let p = format!("text_model.encoder.layers.{l}");
        for q in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            t.push((
                TargetComponent::TextEncoder,
                format!("{p}.self_attn.{q}"),
                vec![768, 768],
            ));
        }
        t.push((
            TargetComponent::TextEncoder,
            format!("{p}.mlp.fc1"),
            vec![3072, 768],
        ));
        t.push((
            TargetComponent::TextEncoder,
            format!("{p}.mlp.fc2"),
            vec![768, 3072],
        ));
    }
    t
}

/// Two rank-`rank` LoRAs over [`sd15_all_targets`] with different values.
pub struct MergeWorkload {
    pub adapters: [Adapter; 2],
    pub params: Vec<TargetParam>,
}

pub fn sd15_merge_workload(rank: usize) -> MergeWorkload {
    let targets = sd15_all_targets();
    let a = synth_lora(rank, &targets, 0x2545_f491_4f6c_dd1d);
    let b = synth_lora(rank, &targets, 0x9e37_79b9_7f4a_7c15);
    MergeWorkload {
        params: a.params,
        adapters: [a.adapter, b.adapter],
    }
}

/// Merges the workload's two LoRAs (strengths 0.7 and 0.5) with `opts`.
pub fn run_merge(
    w: &MergeWorkload,
    opts: &super::merge::MergeOptions,
) -> Result<super::merge::Merged, super::merge::MergeError> {
    let no_base = |_: TargetComponent, _: &str| None;
    let model = ModelParams {
        family: crate::family::Family::Sd1,
        params: w.params.clone(),
        base: &no_base,
    };
    let pairs = [
        (&w.adapters[0], Strengths::uniform(0.7)),
        (&w.adapters[1], Strengths::uniform(0.5)),
    ];
    super::merge::merge(&pairs, &model, opts)
}

/// A kohya LoRA of `rank` over `targets`, F16 factors from an xorshift stream seeded by `seed`.
fn synth_lora(
    rank: usize,
    targets: &[(TargetComponent, String, Vec<usize>)],
    seed: u64,
) -> Workload {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    let mut state = seed;
    let mut push = |name: String,
                    shape: Vec<usize>,
                    header: &mut serde_json::Map<String, serde_json::Value>| {
        let n: usize = shape.iter().product();
        let start = data.len();
        for _ in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
            data.extend_from_slice(&f16::from_f32(v).to_le_bytes());
        }
        header.insert(
            name,
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    };
    let mut params = Vec::new();
    for (component, path, shape) in targets {
        let stem = super::write::kohya_stem(*component, path, crate::family::Family::Sd1);
        let (o, i) = (shape[0], shape[1]);
        let conv = shape.len() == 4;
        push(
            format!("{stem}.lora_down.weight"),
            if conv {
                vec![rank, i, shape[2], shape[3]]
            } else {
                vec![rank, i]
            },
            &mut header,
        );
        push(
            format!("{stem}.lora_up.weight"),
            if conv {
                vec![o, rank, 1, 1]
            } else {
                vec![o, rank]
            },
            &mut header,
        );
        params.push(TargetParam {
            component: *component,
            name: format!("{path}.weight"),
            shape: shape.clone(),
        });
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut bytes = Vec::with_capacity(8 + h.len() + data.len());
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&data);
    let adapter = match Adapter::from_bytes("sd15-synthetic.safetensors", bytes) {
        Ok(a) => a,
        Err(e) => unreachable!("the synthetic file is well-formed: {e}"),
    };
    Workload { adapter, params }
}

/// `compute_deltas` on the workload at strength 1 (no base weights needed for plain LoRA).
pub fn run(w: &Workload) -> Result<Deltas, LoraError> {
    let no_base = |_: TargetComponent, _: &str| None;
    let model = ModelParams {
        family: crate::family::Family::Sd1,
        params: w.params.clone(),
        base: &no_base,
    };
    compute_deltas(&[(&w.adapter, Strengths::uniform(1.0))], &model).map(|(d, _)| d)
}
