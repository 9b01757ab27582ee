//! The flags every command that builds an engine shares ([`EngineFlags`]: model, device, weights,
//! LoRA folders and method, `--cuda-*`), flattened into the workstation, `generate`, `batch` and
//! `bench`. [`EngineFlags::under`] lets flags given before the subcommand fill the subcommand's.

use crate::live::LoraMethod;
use crate::runtime::CudaArgs;
use clap::Args;
use std::path::PathBuf;

/// How a model's weights are read.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct WeightArgs {
    /// Use a single-file checkpoint's EMA UNet weights (`model_ema.*`) instead of the trained ones
    #[arg(long)]
    pub ema: bool,
    /// A separate VAE (.safetensors, LDM or diffusers naming) to use instead of the model's own
    #[arg(long, value_name = "FILE")]
    pub vae: Option<PathBuf>,
    /// The VAE's precision: auto (fp16 on a GPU where the VAE does not overflow in it: SD 1.x and
    /// 2.x, SDXL only with an fp16-fix VAE file; fp32 elsewhere; an overflow is redone in fp32),
    /// fp16 or fp32
    #[arg(long, value_name = "P", value_parser = ["auto", "fp16", "fp32"])]
    pub vae_precision: Option<String>,
    /// The VAE decoder's graph on CUDA: auto (the fused CUDA graph, model.fused.onnx, when the
    /// model has one: fp16, or made f32 for an fp32 decode), plain (the plain export) or fused
    #[arg(long, value_name = "GRAPH", value_parser = ["auto", "plain", "fused"])]
    pub vae_graph: Option<String>,
    /// The text encoders' precision: auto (fp16 on its fused graph for SD 1.x on CUDA, fp32
    /// elsewhere until checked on a GPU), fp16 (an overflow is redone in fp32) or fp32
    #[arg(long, value_name = "P", value_parser = ["auto", "fp16", "fp32"])]
    pub te_precision: Option<String>,
    /// The fp16 text encoders' graph on CUDA: auto (the fused graph, model.fused.onnx, when the
    /// model has one), plain (the plain fp16 graph) or fused
    #[arg(long, value_name = "GRAPH", value_parser = ["auto", "plain", "fused"])]
    pub te_graph: Option<String>,
    /// A1111's clip skip: 2 conditions SD 1.x on the penultimate CLIP layer
    #[arg(long, value_name = "N")]
    pub clip_skip: Option<u32>,
    /// What the UNet predicts: epsilon or v. Overrides the model's scheduler config and the
    /// detection of an SD 2.x checkpoint (its metadata, else A1111's one-step test)
    #[arg(long, value_enum, value_name = "TYPE")]
    pub prediction: Option<crate::model::prediction::Prediction>,
    /// An A1111, Forge, SD.Next or ComfyUI folder: --model and --vae may then be names found in its
    /// models/ folders, and its LoRA folders are searched for <lora:...> tags (config: models_root)
    #[arg(long, value_name = "DIR")]
    pub models_root: Option<PathBuf>,
}

/// The load-time flags shared by every command that runs the model.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct EngineFlags {
    /// Model: a .safetensors checkpoint, a diffusers folder or a stipple folder (default: the
    /// bundled tiny model, tests/fixtures/tiny-sd15)
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Where to run: cpu, cuda:N or dml:N (`batch` takes a list: cuda:0,cuda:1). Default: cpu
    #[arg(
        long = "device",
        visible_alias = "devices",
        value_delimiter = ',',
        value_name = "DEVICE"
    )]
    pub devices: Vec<String>,
    /// Intra-op threads for ONNX Runtime (0 = its default)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Build the UNet and VAE sessions for the job's exact shapes (faster steps; a new size rebuilds
    /// the UNet; the text encoders always get their one shape)
    #[arg(long)]
    pub static_shapes: bool,
    /// UNet graph: auto (the fused CUDA graph on CUDA when the model has one, unless it is one of the
    /// built-in templates' not yet checked on a GPU: SDXL, SD2, SD1 inpainting), plain, cuda
    #[arg(long, value_name = "GRAPH")]
    pub graph: Option<String>,
    /// Keep text-encoder and UNet weights in buffers rewritten in place on an adapter change
    /// (faster swaps, less host memory; on CPU, steps without weight pre-packing). Default: true
    /// on CUDA, false elsewhere
    #[arg(long, value_name = "BOOL")]
    pub resident_weights: Option<bool>,
    /// Where an adapter change of resident weights is computed: device (a patch program on the
    /// GPU, from base copies kept there) or host (ΔW on the CPU, then uploaded). Default: device
    /// on CUDA, host elsewhere
    #[arg(long, value_name = "WHERE", value_parser = ["host", "device"])]
    pub patch_on: Option<String>,
    /// A second UNet session patched for the next step while a step runs, for strength schedules
    /// and dials with the device patch (a second copy of the UNet's weights). Default: false
    #[arg(long, value_name = "BOOL")]
    pub spare_unet: Option<bool>,
    /// How adapters reach the weights: fuse (static fused, scheduled or dialled ones live), live,
    /// refuse (config: generation.lora_method)
    #[arg(long, value_enum)]
    pub lora_method: Option<LoraMethod>,
    /// A folder of LoRA files for <lora:NAME> tags (repeatable; adds to `lora_folders` of the
    /// config and STIPPLE_LORA_DIRS, colon-separated)
    #[arg(long = "lora-dir", value_name = "DIR")]
    pub lora_dirs: Vec<PathBuf>,
    /// A folder of textual-inversion embeddings (*.safetensors), used by file name in prompts
    /// (repeatable; adds to `embedding_folders` of the config)
    #[arg(long = "embeddings", value_name = "DIR")]
    pub embedding_dirs: Vec<PathBuf>,
    /// At most N images go through the UNet together: a job's batch, and in `batch` the images
    /// of compatible jobs (config: generation.unet_batch; 1 = one image at a time)
    #[arg(long, value_name = "N")]
    pub unet_batch: Option<u32>,
    /// VAE decoding (and image-to-image's encoding) in tiles, so large images fit in memory: off
    /// (default), on, auto (above 128×128 latents, a 1024² SD image); the same picture as
    /// untiled, up to float rounding
    #[arg(long, value_enum, value_name = "WHEN")]
    pub vae_tiles: Option<crate::pipeline::vae_tiles::TileMode>,
    #[command(flatten)]
    pub weights: WeightArgs,
    #[command(flatten)]
    pub cuda: CudaArgs,
}

impl EngineFlags {
    /// These flags (given after the subcommand) with `outer` (given before it) filling what is not
    /// given here; lists add up, outer first.
    pub fn under(&self, outer: &EngineFlags) -> EngineFlags {
        let w = &self.weights;
        let ow = &outer.weights;
        let c = &self.cuda;
        let oc = &outer.cuda;
        EngineFlags {
            model: self.model.clone().or(outer.model.clone()),
            devices: if self.devices.is_empty() {
                outer.devices.clone()
            } else {
                self.devices.clone()
            },
            threads: self.threads.or(outer.threads),
            static_shapes: self.static_shapes || outer.static_shapes,
            graph: self.graph.clone().or(outer.graph.clone()),
            resident_weights: self.resident_weights.or(outer.resident_weights),
            patch_on: self.patch_on.clone().or(outer.patch_on.clone()),
            spare_unet: self.spare_unet.or(outer.spare_unet),
            lora_method: self.lora_method.or(outer.lora_method),
            unet_batch: self.unet_batch.or(outer.unet_batch),
            embedding_dirs: outer
                .embedding_dirs
                .iter()
                .chain(&self.embedding_dirs)
                .cloned()
                .collect(),
            vae_tiles: self.vae_tiles.or(outer.vae_tiles),
            lora_dirs: outer
                .lora_dirs
                .iter()
                .chain(&self.lora_dirs)
                .cloned()
                .collect(),
            weights: WeightArgs {
                ema: w.ema || ow.ema,
                vae: w.vae.clone().or(ow.vae.clone()),
                vae_precision: w.vae_precision.clone().or(ow.vae_precision.clone()),
                vae_graph: w.vae_graph.clone().or(ow.vae_graph.clone()),
                te_precision: w.te_precision.clone().or(ow.te_precision.clone()),
                te_graph: w.te_graph.clone().or(ow.te_graph.clone()),
                clip_skip: w.clip_skip.or(ow.clip_skip),
                prediction: w.prediction.or(ow.prediction),
                models_root: w.models_root.clone().or(ow.models_root.clone()),
            },
            cuda: CudaArgs {
                conv_search: c.conv_search.or(oc.conv_search),
                mem_limit_gb: c.mem_limit_gb.or(oc.mem_limit_gb),
                cuda_graph: c.cuda_graph.or(oc.cuda_graph),
                patch_graph: c.patch_graph.or(oc.patch_graph),
                tf32: c.tf32.or(oc.tf32),
                fuse_conv_bias: c.fuse_conv_bias.or(oc.fuse_conv_bias),
            },
        }
    }

    /// Whether any flag was given.
    pub fn given(&self) -> bool {
        *self != EngineFlags::default()
    }
}
