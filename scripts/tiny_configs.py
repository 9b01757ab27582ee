"""Configurations of the tiny test models (diffusers' test-sized SD1.x and SDXL pipelines, real CLIP
vocabulary) and of the full-size random-weight models for GPU benchmarks.

Imported by scripts/export_model.py (which writes tests/fixtures/tiny-sd15/ and tiny-sdxl/) and by the
adapter-fixture scripts, so every fixture is made against the same architecture. Needs torch, diffusers, transformers.
"""

import contextlib

import torch

SEED = 1234

UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    norm_num_groups=32,
    attention_head_dim=8,
)

TEXT_ENCODER = dict(
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    hidden_size=32,
    intermediate_size=37,
    layer_norm_eps=1e-05,
    num_attention_heads=4,
    num_hidden_layers=5,
    vocab_size=49408,
    max_position_embeddings=77,
    projection_dim=32,
    hidden_act="quick_gelu",
)

VAE = dict(
    block_out_channels=[32, 64],
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    latent_channels=4,
    norm_num_groups=32,
    sample_size=64,
)

SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


def randomize_(module, seed):
    """Gives every parameter distinct random values.

    The ONNX exporter merges parameters with equal values into one initializer, and a
    default-initialised model has every norm weight 1.0, so norms get 1 + small noise and biases small noise.
    """
    device = next(module.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32)
            if p.dim() == 1 and ("norm" in name or "ln" in name or "layer_norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.05 * noise)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(noise / fan_in**0.5)
    return module


@contextlib.contextmanager
def default_dtype(dtype):
    """Modules built inside get `dtype` parameters (torch's default dtype, restored on exit)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def build_sd15(seed=SEED):
    """Returns (unet, text_encoder, vae, scheduler) with random weights, fp32, eval mode."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = randomize_(UNet2DConditionModel(**UNET), seed).eval()
    text_encoder = randomize_(CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)), seed + 1).eval()
    vae = randomize_(AutoencoderKL(**VAE), seed + 2).eval()
    scheduler = PNDMScheduler(**SCHEDULER)
    return unet, text_encoder, vae, scheduler


def text_encoder_state_dict(text_encoder):
    """State dict with the classic `text_model.` names of released SD checkpoints.

    transformers 5 flattened CLIPTextModel (no `text_model` level); kohya LoRA keys assume it.
    """
    out = {}
    for k, v in text_encoder.state_dict().items():
        out[k if k.startswith("text_model.") else "text_model." + k] = v
    return out


# Full-size SD1.5 architecture (random weights): for benchmarks on the GPU machine.
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD15_TEXT_ENCODER = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
SD15_VAE = dict(
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
)


def build_sd15_random(device="cpu", seed=SEED, dtype=torch.float32):
    """Full-size SD1.5-architecture components with random weights (on `device`, fp32).

    dtype=torch.float16 builds them in half the memory with the same values rounded: randomize_ draws the same
    float32 noise either way, and storing it rounds to nearest as .half() of the fp32 build does."""
    parts = [random_component("sd15", c, device, seed, dtype) for c in ("unet", "text_encoder", "vae")]
    return (*parts, random_scheduler("sd15"))


# Tiny SDXL: diffusers' test-sized SDXL pipeline (tests/pipelines/stable_diffusion_xl, get_dummy_components)
# with the real CLIP vocabulary. Context 64 = 32 + 32 (both encoders' hidden states concatenated);
# the added embedding takes 6 time ids × 8 + the second encoder's 32-wide projection = 80.
SDXL_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80,
    cross_attention_dim=64,
)

SDXL_TEXT_ENCODER = dict(TEXT_ENCODER)
# The second encoder is OpenCLIP bigG's shape in SDXL: gelu, with a text projection.
SDXL_TEXT_ENCODER_2 = dict(TEXT_ENCODER, hidden_act="gelu", pad_token_id=0)

# SDXL's VAE config differs from SD1's in scaling_factor (and force_upcast); the architecture is the tiny one.
SDXL_VAE = dict(VAE, scaling_factor=0.13025, force_upcast=True)

# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json. It keeps DDIM/PNDM keys
# (clip_sample, set_alpha_to_one) that Euler ignores but other schedulers built from it read.
SDXL_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    sample_max_value=1.0,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    timestep_spacing="leading",
    trained_betas=None,
    use_karras_sigmas=False,
)


def build_sdxl(seed=SEED):
    """Returns (unet, text_encoder, text_encoder_2, vae, scheduler): tiny SDXL, random weights, fp32, eval."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = randomize_(UNet2DConditionModel(**SDXL_UNET), seed + 10).eval()
    te = randomize_(CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER)), seed + 11).eval()
    te2 = randomize_(CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2)), seed + 12).eval()
    vae = randomize_(AutoencoderKL(**SDXL_VAE), seed + 13).eval()
    return unet, te, te2, vae, EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)


# Full-size SDXL base architecture (random weights): for benchmarks on the GPU machine (gpu/README.md §2).
SDXL_FULL_UNET = dict(
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_FULL_TEXT_ENCODER = dict(SD15_TEXT_ENCODER)
SDXL_FULL_TEXT_ENCODER_2 = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=0,
)
SDXL_FULL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)


def build_sdxl_random(device="cpu", seed=SEED, dtype=torch.float32):
    """Full-size SDXL-architecture components with random weights (on `device`, fp32; dtype as build_sd15_random)."""
    parts = [random_component("sdxl", c, device, seed, dtype) for c in ("unet", "text_encoder", "text_encoder_2", "vae")]
    return (*parts, random_scheduler("sdxl"))


# Full-size SD 2.x (stabilityai/stable-diffusion-2-1 and -2-base configs): the UNet with linear
# projections and per-level head counts, context 1024; upcast_attention as 2.1 has it (fp16 attention
# of the 768-v model overflows without it; a no-op in fp32). The text encoder is OpenCLIP-H as diffusers
# keeps it: 23 of its 24 layers, since SD2 conditions on the penultimate layer's output through the final
# norm (diffusers' SD2 text_encoder/config.json: num_hidden_layers 23), so last_hidden_state is SD2's context.
SD2_FULL_UNET = dict(
    sample_size=64,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    upcast_attention=True,
)
SD2_FULL_TEXT_ENCODER = dict(
    SD15_TEXT_ENCODER,
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=23,
    hidden_act="gelu",
    projection_dim=512,
    pad_token_id=0,
)
# stabilityai/stable-diffusion-2-base's scheduler (epsilon); a 768-v checkpoint gets
# prediction_type v_prediction when it is opened.
SD2_SCHEDULER = dict(SCHEDULER, prediction_type="epsilon")
# SD1.5 inpainting (runwayml/stable-diffusion-inpainting): 9 input channels (latents, mask, masked image).
SD15_INPAINT_UNET = dict(SD15_UNET, in_channels=9)

# Tiny SD 2.x: tiny-sd15's sizes with SD2's linear projections and a gelu text encoder that pads with "!"
# (OpenCLIP's tokenizer as SD2 ships it); v-prediction, as stable-diffusion-2-1.
SD2_TINY_UNET = dict(UNET, use_linear_projection=True)
SD2_TINY_TEXT_ENCODER = dict(TEXT_ENCODER, hidden_act="gelu", pad_token_id=0)
SD2_TINY_SCHEDULER = dict(SD2_SCHEDULER, prediction_type="v_prediction")
# Tiny SD1 inpainting: tiny-sd15's architecture with a 9-channel conv_in.
INPAINT_TINY_UNET = dict(UNET, in_channels=9)


def build_one_encoder(unet_cfg, te_cfg, sched_cfg, seed):
    """(unet, text_encoder, vae, scheduler) of a one-encoder tiny model (SD2, SD1 inpainting): random
    weights from seed, seed + 1, seed + 2; fp32, eval; the tiny VAE; a PNDM scheduler."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = randomize_(UNet2DConditionModel(**unet_cfg), seed).eval()
    te = randomize_(CLIPTextModel(CLIPTextConfig(**te_cfg)), seed + 1).eval()
    vae = randomize_(AutoencoderKL(**VAE), seed + 2).eval()
    return unet, te, vae, PNDMScheduler(**sched_cfg)


def build_sd2(seed=SEED):
    """Tiny SD 2.x: (unet, text_encoder, vae, scheduler)."""
    return build_one_encoder(SD2_TINY_UNET, SD2_TINY_TEXT_ENCODER, SD2_TINY_SCHEDULER, seed + 20)


def build_sd15_inpaint(seed=SEED):
    """Tiny SD1 with a 9-channel inpainting UNet: (unet, text_encoder, vae, scheduler)."""
    return build_one_encoder(INPAINT_TINY_UNET, TEXT_ENCODER, SCHEDULER, seed + 30)


# Full-size components: (config, seed offset) per family. Each component has its own generator, so one
# built alone equals the same component of build_*_random (export_model.py --template builds them one at
# a time: SDXL in fp32 is 14 GB of parameters).
RANDOM_COMPONENTS = {
    "sd15": {"unet": (SD15_UNET, 0), "text_encoder": (SD15_TEXT_ENCODER, 1), "vae": (SD15_VAE, 2)},
    "sd2": {"unet": (SD2_FULL_UNET, 0), "text_encoder": (SD2_FULL_TEXT_ENCODER, 1), "vae": (SD15_VAE, 2)},
    "sd15-inpaint": {"unet": (SD15_INPAINT_UNET, 0), "text_encoder": (SD15_TEXT_ENCODER, 1), "vae": (SD15_VAE, 2)},
    "sdxl": {
        "unet": (SDXL_FULL_UNET, 0),
        "text_encoder": (SDXL_FULL_TEXT_ENCODER, 1),
        "text_encoder_2": (SDXL_FULL_TEXT_ENCODER_2, 2),
        "vae": (SDXL_FULL_VAE, 3),
    },
}


def random_component(family, component, device="cpu", seed=SEED, dtype=torch.float32):
    """One full-size component ("unet", "text_encoder", "text_encoder_2" or "vae") with random weights,
    `dtype` (fp32 by default), eval mode, on `device`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg, offset = RANDOM_COMPONENTS[family][component]
    with torch.device(device), default_dtype(dtype):
        if component == "unet":
            m = UNet2DConditionModel(**cfg)
        elif component == "vae":
            m = AutoencoderKL(**cfg)
        elif component == "text_encoder_2":
            m = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
        else:
            m = CLIPTextModel(CLIPTextConfig(**cfg))
        return randomize_(m, seed + offset).eval()


def random_scheduler(family):
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    if family == "sdxl":
        return EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    return PNDMScheduler(**(SD2_SCHEDULER if family == "sd2" else SCHEDULER))
