//! A synthetic real-size workload for benchmarks: a kohya LoRA/LoCon of a given rank over the SD1.5
//! UNet with SD1.5 shapes: the 192 attention modules (16 transformer blocks × 10 + 16 proj_in/out),
//! and with [`sd15_full_unet_lora`] also every resnet (3×3 conv1/conv2, time_emb_proj, shortcut),
//! the down/upsampler convs, conv_in/conv_out and the time embedding: 282 layers.
//!
//! Use: `let w = stipple::lora::bench::sd15_unet_lora(32); stipple::lora::bench::run(&w)?;`

use half::f16;

use super::{
    compute_deltas, Adapter, Component, Deltas, LoraError, ModelParams, Strengths, TargetParam,
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

/// `(module path, target shape)` of every resnet, sampler and stem layer of SD1.5 (LoCon's share).
pub fn sd15_conv_targets() -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("conv_in".to_string(), vec![320, 4, 3, 3]),
        ("conv_out".to_string(), vec![4, 320, 3, 3]),
        ("time_embedding.linear_1".to_string(), vec![1280, 320]),
        ("time_embedding.linear_2".to_string(), vec![1280, 1280]),
    ];
    let mut resnet = |path: String, cin: usize, cout: usize| {
        t.push((format!("{path}.conv1"), vec![cout, cin, 3, 3]));
        t.push((format!("{path}.conv2"), vec![cout, cout, 3, 3]));
        t.push((format!("{path}.time_emb_proj"), vec![cout, 1280]));
        if cin != cout {
            t.push((format!("{path}.conv_shortcut"), vec![cout, cin, 1, 1]));
        }
    };
    // Down path: (block, in channels of its first resnet, out channels).
    for (b, cin, c) in [(0, 320, 320), (1, 320, 640), (2, 640, 1280), (3, 1280, 1280)] {
        resnet(format!("down_blocks.{b}.resnets.0"), cin, c);
        resnet(format!("down_blocks.{b}.resnets.1"), c, c);
    }
    resnet("mid_block.resnets.0".into(), 1280, 1280);
    resnet("mid_block.resnets.1".into(), 1280, 1280);
    // Up path: input channels are the previous output plus the skip connection.
    for (b, c, ins) in [
        (0, 1280, [2560, 2560, 2560]),
        (1, 1280, [2560, 2560, 1920]),
        (2, 640, [1920, 1280, 960]),
        (3, 320, [960, 640, 640]),
    ] {
        for (j, cin) in ins.into_iter().enumerate() {
            resnet(format!("up_blocks.{b}.resnets.{j}"), cin, c);
        }
    }
    for (b, c) in [(0, 320), (1, 640), (2, 1280)] {
        t.push((format!("down_blocks.{b}.downsamplers.0.conv"), vec![c, c, 3, 3]));
    }
    for (b, c) in [(0, 1280), (1, 1280), (2, 640)] {
        t.push((format!("up_blocks.{b}.upsamplers.0.conv"), vec![c, c, 3, 3]));
    }
    t
}

/// Builds the attention-only workload in memory (F16 factors, deterministic values).
pub fn sd15_unet_lora(rank: usize) -> Workload {
    workload(rank, sd15_targets())
}

/// Attention plus every conv/linear layer of the UNet (LoCon: k×k down, 1×1 up).
pub fn sd15_full_unet_lora(rank: usize) -> Workload {
    let mut targets = sd15_targets();
    targets.extend(sd15_conv_targets());
    workload(rank, targets)
}

fn workload(rank: usize, targets: Vec<(String, Vec<usize>)>) -> Workload {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
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
    for (path, shape) in targets {
        let stem = format!("lora_unet_{}", path.replace('.', "_"));
        let (o, i) = (shape[0], shape[1]);
        let conv = shape.len() == 4;
        let rank = rank.min(o).min(i * shape.get(2).copied().unwrap_or(1).pow(2));
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
            component: Component::Unet,
            name: format!("{path}.weight"),
            shape,
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
    let no_base = |_: Component, _: &str| None;
    let model = ModelParams {
        family: crate::family::Family::Sd1,
        params: w.params.clone(),
        base: &no_base,
    };
    compute_deltas(&[(&w.adapter, Strengths::uniform(1.0))], &model).map(|(d, _)| d)
}
