"""The diffusers pipeline's reference outputs for the tiny fixtures (<fixture>/reference/): token ids,
text embeddings, torch.randn latents, one UNet output, the final images per scheduler, and the VAE
encoder's latent distribution. Also the shared prompt, seed and schedulers of those images."""
import json
import os

import torch

from onnx_export import VaeEncoderWrapper


PROMPTS = [
    "a red fox",
    "a photo of a cat",
    "A Photo Of An ASTRONAUT riding a horse, HIGHLY detailed!!!",
    "café Ünïcode naïve 日本語 emoji 🦊 fox",
    "tom &amp; jerry's 1990s   cartoon,\n\tsecond line",
    " ".join(["a long prompt about a majestic fox in a snowy forest at dawn"] * 8),
    "",
]
SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp-2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
}
IMAGE_PROMPT = "a red fox in the snow"
IMAGE_NEGATIVE = "blurry"
IMAGE_SEED = 42
LATENT_CASES = [(0, [1, 4, 8, 8]), (1, [1, 4, 32, 32]), (42, [2, 4, 32, 32]), (2**32 + 7, [1, 4, 16, 24]), (7, [1, 3])]


def reference_image(pipe, steps, negative=IMAGE_NEGATIVE, height=64, width=64, **kwargs):
    """The reference settings on a diffusers pipeline: IMAGE_PROMPT, seed IMAGE_SEED through a CPU generator
    (the pipeline draws the initial latents from it), cfg 7. Returns the PIL image."""
    g = torch.Generator("cpu").manual_seed(IMAGE_SEED)
    with torch.no_grad():
        return pipe(IMAGE_PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=7.0,
                    generator=g, height=height, width=width, **kwargs).images[0]


def round_to_fp16_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


def write_references(out, unet, text_encoder, vae, scheduler, tokenizer_dir):
    import diffusers
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    ref = os.path.join(out, "reference")
    os.makedirs(ref, exist_ok=True)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)

    tokens = []
    for p in PROMPTS:
        tokens.append(
            {
                "prompt": p,
                "ids": tok(p, add_special_tokens=False).input_ids,
                "padded": tok(p, padding="max_length", max_length=77, truncation=True).input_ids,
            }
        )
    with open(os.path.join(ref, "tokens.json"), "w") as f:
        json.dump(tokens, f, indent=1, ensure_ascii=False)

    tensors = {}
    with torch.no_grad():
        for i, p in enumerate(PROMPTS[:3]):
            ids = torch.tensor([tok(p, padding="max_length", max_length=77, truncation=True).input_ids])
            out_te = text_encoder(ids, output_hidden_states=True)
            tensors[f"embedding.{i}"] = out_te.last_hidden_state[0].contiguous()
            tensors[f"pooled.{i}"] = out_te.pooler_output[0].contiguous()
        for seed, shape in LATENT_CASES:
            g = torch.Generator("cpu").manual_seed(seed)
            tensors[f"latents.{seed}." + "x".join(map(str, shape))] = torch.randn(shape, generator=g)
        g = torch.Generator("cpu").manual_seed(5)
        sample = torch.randn(2, 4, 32, 32, generator=g)
        ehs = torch.randn(2, 77, 32, generator=g)
        t = torch.tensor([981.0, 981.0])
        tensors["unet.sample"] = sample
        tensors["unet.timestep"] = t
        tensors["unet.encoder_hidden_states"] = ehs
        tensors["unet.out"] = unet(sample, t, ehs).sample
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ref, "tensors.safetensors"))

    images = []
    for slug, (cls_name, extra) in SCHEDULERS.items():
        cls = getattr(diffusers, cls_name)
        sched = cls.from_config(scheduler.config, **extra)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tok,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        for steps in (4, 8):
            img = reference_image(pipe, steps)
            name = f"image.{slug}.{steps}.png"
            img.save(os.path.join(ref, name))
            images.append({"file": name, "sampler": slug, "steps": steps})
    with open(os.path.join(ref, "images.json"), "w") as f:
        json.dump(
            {
                "prompt": IMAGE_PROMPT,
                "negative": IMAGE_NEGATIVE,
                "seed": IMAGE_SEED,
                "cfg": 7.0,
                "width": 64,
                "height": 64,
                "images": images,
                "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            },
            f,
            indent=1,
        )


def write_references_sdxl(out, unet, text_encoder, text_encoder_2, vae, scheduler, tok_dirs):
    """The SDXL references: ids per tokenizer, each encoder's penultimate hidden state, diffusers'
    concatenated conditioning and pooled embedding, one UNet output with the added conditioning, images."""
    import diffusers
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    ref = os.path.join(out, "reference")
    os.makedirs(ref, exist_ok=True)
    tok = CLIPTokenizer.from_pretrained(tok_dirs[0])
    tok2 = CLIPTokenizer.from_pretrained(tok_dirs[1])
    assert tok2.pad_token_id == 0, tok2.pad_token_id

    def padded(t, p):
        return t(p, padding="max_length", max_length=77, truncation=True).input_ids

    tokens = [
        {"prompt": p, "ids": tok(p, add_special_tokens=False).input_ids, "padded": padded(tok, p),
         "padded_2": padded(tok2, p)}
        for p in PROMPTS
    ]
    with open(os.path.join(ref, "tokens.json"), "w") as f:
        json.dump(tokens, f, indent=1, ensure_ascii=False)

    def pipeline(sched):
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
            tokenizer_2=tok2, unet=unet, scheduler=sched, add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    tensors = {}
    pipe = pipeline(scheduler)
    with torch.no_grad():
        for i, p in enumerate(PROMPTS[:3]):
            ids = torch.tensor([padded(tok, p)])
            ids2 = torch.tensor([padded(tok2, p)])
            o1 = text_encoder(ids, output_hidden_states=True)
            o2 = text_encoder_2(ids2, output_hidden_states=True)
            tensors[f"te1.penultimate.{i}"] = o1.hidden_states[-2][0]
            tensors[f"te2.penultimate.{i}"] = o2.hidden_states[-2][0]
            # diffusers' own conditioning: [77, 64] and the pooled, projected [32].
            embeds, _, pooled, _ = pipe.encode_prompt(p, do_classifier_free_guidance=False)
            tensors[f"embedding.{i}"] = embeds[0]
            tensors[f"pooled.{i}"] = pooled[0]
        g = torch.Generator("cpu").manual_seed(5)
        sample = torch.randn(2, 4, 32, 32, generator=g)
        ehs = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
        text_embeds = torch.randn(2, text_encoder_2.config.projection_dim, generator=g)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [128.0, 96.0, 8.0, 16.0, 64.0, 64.0]])
        t = torch.tensor([981.0, 981.0])
        tensors["unet.sample"] = sample
        tensors["unet.timestep"] = t
        tensors["unet.encoder_hidden_states"] = ehs
        tensors["unet.text_embeds"] = text_embeds
        tensors["unet.time_ids"] = time_ids
        tensors["unet.out"] = unet(
            sample, t, ehs, added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}
        ).sample
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ref, "tensors.safetensors"))

    images = []
    cases = [(slug, steps, IMAGE_NEGATIVE) for slug in SCHEDULERS for steps in (4, 8)]
    # No negative prompt: SDXL's force_zeros_for_empty_prompt conditions the negative half on zeros.
    cases.append(("euler", 4, None))
    for slug, steps, negative in cases:
        cls_name, extra = SCHEDULERS[slug]
        pipe = pipeline(getattr(diffusers, cls_name).from_config(scheduler.config, **extra))
        img = reference_image(pipe, steps, negative)
        name = f"image.{slug}.{steps}" + ("" if negative is not None else ".no-negative") + ".png"
        img.save(os.path.join(ref, name))
        images.append({"file": name, "sampler": slug, "steps": steps, "negative": negative or ""})
    with open(os.path.join(ref, "images.json"), "w") as f:
        json.dump(
            {
                "prompt": IMAGE_PROMPT,
                "seed": IMAGE_SEED,
                "cfg": 7.0,
                "width": 64,
                "height": 64,
                "images": images,
                "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            },
            f,
            indent=1,
        )


def write_vae_encoder_reference(out, vae):
    """reference/vae_encoder.safetensors: `sample` (two images in [-1, 1], 48x64: not square, not the
    traced size) and diffusers' `vae.encode(sample).latent_dist` `mean` and `logvar`, in fp32.

    diffusers clamps logvar to [-30, 20]; the graph's latent_parameters are before the clamp, so the
    reference asserts the clamp did nothing here.
    """
    from safetensors.torch import save_file

    ref = os.path.join(out, "reference")
    os.makedirs(ref, exist_ok=True)
    g = torch.Generator("cpu").manual_seed(11)
    x = torch.rand(2, vae.config.in_channels, 48, 64, generator=g) * 2 - 1
    vae = vae.float()
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        moments = VaeEncoderWrapper(vae)(x)
    assert torch.equal(moments, torch.cat([dist.mean, dist.logvar], dim=1)), "logvar clamped or moments differ"
    tensors = {"sample": x, "mean": dist.mean, "logvar": dist.logvar}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ref, "vae_encoder.safetensors"))
