#!/usr/bin/env python3
"""Hires-fix and upscaler references for the tiny SD1.5 and SDXL fixtures (and the 9-channel SD1, SD2, SDXL ones).

    /work/venv/bin/python scripts/hires_reference.py [--upscaler-only | --inpaint-unet-only | --sdxl-only]   # (a venv with torch, diffusers, onnx)

1. tests/fixtures/upscaler/tiny-2x.onnx: a tiny image upscaler with random weights, shaped like
   Real-ESRGAN's exports (input `[1, 3, H, W]` RGB in 0..1, output `[1, 3, 2H, 2W]`): two 3x3
   convolutions and a PixelShuffle x2 added to the nearest-neighbour upscale of the input. Its
   untiled torch output on tests/fixtures/img2img/init.png is upscaler/init.2x.png
   (clamped to 0..1, x255, rounded, as A1111 and Real-ESRGAN convert it). two-inputs.onnx is a graph
   that is not an image upscaler (two inputs), for the error stipple gives.
2. tests/fixtures/upscaler/interpolate.json: torch's F.interpolate of a small random tensor in every
   latent mode of A1111 (`shared.latent_upscale_modes`), up and down.
3. tests/fixtures/tiny-sd15/reference/hires.json and its images: A1111's hires fix rebuilt on diffusers
   pipelines. First pass: StableDiffusionPipeline at 64x64 (output_type="latent", or the decoded picture
   for the pixel upscalers). Upscale: the latents by F.interpolate(size=..., mode, antialias) as A1111
   does, or the picture by Pillow's LANCZOS / the upscaler model. Second pass:
   StableDiffusionImg2ImgPipeline on those latents (4 channels are taken as they are) or that picture,
   with a fresh generator of the same seed (A1111 draws the second pass's noise from the image's seed
   again), num_inference_steps = hires steps (0: the first pass's), strength = hires denoise.
4. tests/fixtures/tiny-sd15-inpaint/reference/hires.json and its images (`--inpaint-unet-only` makes
   only these): the same on the 9-channel inpainting UNet, on StableDiffusionInpaintPipeline. First
   pass: text-to-image as stipple runs it on such a model (strength 1, an all-white mask, the UNet's
   masked-picture planes the posterior mean of an all-zero picture, so only the noise is drawn).
   Second pass: the pipeline on the upscaled picture under an all-white mask at strength = hires
   denoise, so the masked picture is the picture times 0, encoded with a posterior sample drawn after
   the noise (A1111's `inpainting_image_conditioning` with no mask, inpainting_mask_weight 1). The
   latent upscalers give the pipeline 4-channel latents, taken as they are; the zero picture then
   goes in as `masked_image_latents` (3 channels, so the pipeline still encodes and samples it).
   Each case is written twice: `file` all torch, and `file_onnx_zero` with the zero picture's VAE
   moments from the fixture's own ONNX encoder through onnxruntime (the graph stipple runs; the same
   posterior draw). On the tiny random VAE the encoding of a constant picture is ill-conditioned
   (GroupNorm over a near-constant input): torch and onnxruntime differ by up to 2e-3 there (5e-6
   on a real picture), which the tiny UNet turns into about 1/255 on the pixel upscalers' cases.
5. The same cases on the SD 2.x and SDXL 9-channel fixtures (`--inpaint-unet-only` makes these too):
   tests/fixtures/sd2-inpaint/reference/hires.json (StableDiffusionInpaintPipeline, epsilon) and
   tests/fixtures/sdxl-inpaint/reference/hires.json (StableDiffusionXLInpaintPipeline, both text
   encoders, the size conditioning left to the pipeline: original = target = each pass's size, crop
   (0, 0)), on the UNet scripts/sdxl_inpaint_fixtures.py made (rebuilt from its seed, checked against
   the fixture's unet/) and the base tiny model's encoders, VAE and VAE encoder graph.
6. tests/fixtures/tiny-sdxl/reference/hires.json and its images (`--sdxl-only` makes only these): item 3
   on the plain tiny SDXL model with StableDiffusionXLPipeline and StableDiffusionXLImg2ImgPipeline (both
   text encoders), for a latent mode and Lanczos (SDXL_CASES). Each pass's size conditioning is given
   explicitly as A1111 gives it: original_size = target_size = that pass's size (the first pass 64x64,
   the second the hires size), crops_coords_top_left (0, 0) (A1111 builds the hires pass's prompts with
   width/height = hr_upscale_to_x/y, and sd_models_xl.get_learned_conditioning makes both sizes from
   them; its crop is the sdxl_crop_top/left options, default 0). That is also what the img2img pipeline
   would default to; stipple's time_ids are the same. Each image records its six time ids per pass.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import diffusers_reference as ref
from img2img_reference import FIXTURES, check_decoder, scheduler_for
from model_folder import tiny_models

STEPS = 8
SIZE = 64
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# (upscaler, sampler, hires steps, hires denoise, scale)
CASES = [
    ("Latent", "euler-a", 0, 0.6, 2),
    ("Latent (bicubic antialiased)", "dpmpp-2m", 6, 0.5, 2),
    ("Latent (nearest-exact)", "ddim", 0, 0.7, 1.5),
    ("Lanczos", "euler", 0, 0.5, 2),
    ("tiny-2x", "euler-a", 4, 0.75, 2),
]


class TinyUpscaler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 12, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(0.3)

    def forward(self, x):
        detail = self.shuffle(self.c2(torch.relu(self.c1(x))))
        return F.interpolate(x, scale_factor=2, mode="nearest") + 0.2 * detail


def make_upscaler(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = TinyUpscaler().eval()
    path = os.path.join(out, "tiny-2x.onnx")
    x = torch.rand(1, 3, 16, 16)
    torch.onnx.export(model, (x,), path, input_names=["image"], output_names=["upscaled"], opset_version=17,
                      dynamic_axes={"image": {2: "h", 3: "w"}, "upscaled": {2: "h2", 3: "w2"}}, dynamo=False)
    return model


class TwoInputs(torch.nn.Module):
    """Not an image upscaler: two inputs (stipple must refuse it with a clear error)."""

    def forward(self, x, y):
        return F.interpolate(x + y, scale_factor=2, mode="nearest")


def make_wrong_upscaler(out):
    x = torch.rand(1, 3, 8, 8)
    torch.onnx.export(TwoInputs(), (x, x), os.path.join(out, "two-inputs.onnx"), input_names=["a", "b"],
                      output_names=["out"], opset_version=17, dynamo=False)


def run_upscaler(model, img):
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = model(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return Image.fromarray(np.round(y * 255).astype(np.uint8), "RGB")


def interpolate_cases(out):
    torch.manual_seed(1)
    x = torch.randn(1, 2, 5, 7)
    cases = []
    for name, (mode, aa) in LATENT_MODES.items():
        for size in [(10, 14), (8, 11), (3, 4)]:
            y = F.interpolate(x, size=size, mode=mode, antialias=aa)
            cases.append({"mode": name, "size": list(size), "out": y.flatten().tolist()})
    with open(os.path.join(out, "interpolate.json"), "w") as f:
        json.dump({"shape": list(x.shape), "input": x.flatten().tolist(), "cases": cases}, f)


# (upscaler, sampler, hires steps, hires denoise, scale) on the 9-channel inpainting UNet
INPAINT_CASES = [
    ("Latent", "euler-a", 0, 0.6, 2),
    ("Lanczos", "euler", 0, 0.5, 2),
    ("tiny-2x", "ddim", 4, 0.75, 2),
]
# The 9-channel fixtures written: tiny-sd15-inpaint, sd2-inpaint, sdxl-inpaint.
INPAINT_FAMILIES = ["sd1", "sd2", "sdxl"]


def onnx_encoder(folder):
    """The fixture's VAE encoder graph with its weights (identity weight map) in onnxruntime:
    picture [1, 3, H, W] in [-1, 1] -> moments [1, 8, H/f, W/f]."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    m = onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False)
    with open(os.path.join(folder, "weightmap.json")) as f:
        entries = {e["name"]: e for e in json.load(f)["initializers"]}
    weights = load_file(os.path.join(folder, "weights.safetensors"))
    assert all(e["transform"] == "identity" for e in entries.values())
    inits = [numpy_helper.from_array(weights[entries[i.name]["source"]].astype(np.float32)
                                     .reshape(entries[i.name]["shape"]), i.name) for i in m.graph.initializer]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    session = ort.InferenceSession(m.SerializeToString())
    return lambda x: torch.from_numpy(session.run(None, {"sample": x.float().numpy()})[0])


def write_manifest(folder, images):
    """folder/reference/hires.json: the first pass's job and every reference image's settings."""
    import diffusers

    meta = {"prompt": ref.IMAGE_PROMPT, "negative": ref.IMAGE_NEGATIVE, "seed": ref.IMAGE_SEED, "cfg": 7.0,
            "steps": STEPS, "width": SIZE, "height": SIZE,
            "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__}}
    with open(os.path.join(folder, "reference", "hires.json"), "w") as f:
        json.dump(dict(meta, images=images), f, indent=1)


def inpaint_models(family):
    """(fixture, unet, [encoders], [tokenizers], vae, scheduler, pipeline class, VAE encoder folder) of a
    9-channel fixture: `sd1` the tiny SD 1.5 inpainting model; `sd2`, `sdxl` the 9-channel UNet of
    scripts/sdxl_inpaint_fixtures.py (rebuilt from its seed and checked bit for bit against the fixture's
    unet/) with its base tiny model's encoders, VAE and scheduler (epsilon for SD2), as that script's
    references are made."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
    from transformers import CLIPTokenizer

    if family == "sd1":
        fixture = os.path.join(FIXTURES, "tiny-sd15-inpaint")
        unet, encoders, vae, sched = tiny_models("sd1-inpaint")
        base = fixture
    else:
        from diffusers import UNet2DConditionModel

        import sdxl_inpaint_fixtures as nine
        import tiny_configs
        from diffusers_reference import round_to_fp16_
        from single_file_fixtures import match_fixture

        out, tiny, _, unet_config, seed, prediction = nine.FAMILIES[family]
        fixture = os.path.join(FIXTURES, out)
        base = os.path.join(FIXTURES, tiny)
        _, encoders, vae, sched = tiny_models(family)
        if prediction is not None:
            sched = type(sched).from_config(sched.config, prediction_type=prediction)
        unet = tiny_configs.randomize_(UNet2DConditionModel(**dict(unet_config, in_channels=9)), seed).eval()
        round_to_fp16_(unet)
        if not match_fixture(fixture, "unet", unet):
            raise SystemExit(f"{fixture}: the rebuilt 9-channel UNet differs from unet/")
    check_decoder(base, vae)
    assert unet.config.in_channels == 9
    toks = [CLIPTokenizer.from_pretrained(os.path.join(base, t)) for t in ["tokenizer", "tokenizer_2"][:len(encoders)]]
    cls = StableDiffusionXLInpaintPipeline if family == "sdxl" else StableDiffusionInpaintPipeline
    return fixture, unet, encoders, toks, vae, sched, cls, os.path.join(base, "vae_encoder")


def inpaint_unet_references(upscaler, family="sd1"):
    from diffusers.utils.torch_utils import randn_tensor

    fixture, unet, encoders, toks, vae, sched, cls, encoder_dir = inpaint_models(family)
    ort_moments = onnx_encoder(encoder_dir)

    def pipe(slug, onnx_zero=False):
        if family == "sdxl":
            # As scripts/sdxl_inpaint_fixtures.py: both encoders, the size/crop conditioning left to the
            # pipeline (original = target = the pass's size, crop (0, 0)), as stipple's time_ids.
            p = cls(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=toks[0],
                    tokenizer_2=toks[1], unet=unet, scheduler=scheduler_for(sched, slug), add_watermarker=False)
        else:
            p = cls(vae=vae, text_encoder=encoders[0], tokenizer=toks[0], unet=unet,
                    scheduler=scheduler_for(sched, slug), safety_checker=None, feature_extractor=None,
                    requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        if onnx_zero:
            torch_encode = p._encode_vae_image

            def encode(image, generator):
                if torch.count_nonzero(image) > 0:
                    return torch_encode(image, generator)
                mean, logvar = ort_moments(image).chunk(2, 1)
                std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
                return vae.config.scaling_factor * (mean + std * randn_tensor(mean.shape, generator=generator))

            p._encode_vae_image = encode
        return p

    def call(p, steps, **kwargs):
        g = torch.Generator("cpu").manual_seed(ref.IMAGE_SEED)
        with torch.no_grad():
            return p(ref.IMAGE_PROMPT, negative_prompt=ref.IMAGE_NEGATIVE, num_inference_steps=steps,
                     guidance_scale=7.0, generator=g, **kwargs).images

    with torch.no_grad():
        zero_mean = vae.config.scaling_factor * vae.encode(torch.zeros(1, 3, SIZE, SIZE)).latent_dist.mean
    white = Image.new("L", (SIZE, SIZE), 255)
    grey = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))  # unread at strength 1
    images = []
    for upscaler_name, slug, hires_steps, denoise, scale in INPAINT_CASES:
        target = int(SIZE * scale)
        latent = upscaler_name in LATENT_MODES
        first = call(pipe(slug), STEPS, image=grey, mask_image=white, masked_image_latents=zero_mean,
                     strength=1.0, height=SIZE, width=SIZE, output_type="latent" if latent else "pil")
        if latent:
            mode, aa = LATENT_MODES[upscaler_name]
            factor = SIZE // first.shape[-1]
            image = F.interpolate(first, size=(target // factor, target // factor), mode=mode, antialias=aa)
            extra = dict(masked_image_latents=torch.zeros(1, 3, target, target))
        else:
            picture = first[0]
            if upscaler_name == "Lanczos":
                image = picture.resize((target, target), Image.LANCZOS)
            else:
                image = run_upscaler(upscaler, picture)
            extra = {}
        stem = f"{upscaler_name.replace(' ', '_').replace('(', '').replace(')', '')}.{slug}.png"
        for onnx_zero, name in [(False, f"hires.{stem}"), (True, f"hires_onnx_zero.{stem}")]:
            out = call(pipe(slug, onnx_zero), hires_steps or STEPS, image=image,
                       mask_image=Image.new("L", (target, target), 255), strength=denoise, height=target,
                       width=target, **extra)[0]
            out.save(os.path.join(fixture, "reference", name))
        images.append({"file": f"hires.{stem}", "file_onnx_zero": f"hires_onnx_zero.{stem}",
                       "upscaler": upscaler_name, "sampler": slug, "hires_steps": hires_steps,
                       "denoise": denoise, "scale": scale,
                       "model": "tiny-2x.onnx" if upscaler_name == "tiny-2x" else None})
    write_manifest(fixture, images)
    print(f"wrote {fixture}'s hires references")


# (upscaler, sampler, hires steps, hires denoise, scale) on tiny SDXL: a latent mode and Lanczos
SDXL_CASES = [
    ("Latent", "euler-a", 0, 0.6, 2),
    ("Lanczos", "dpmpp-2m", 6, 0.5, 1.5),
]


def size_conditioning(size):
    """SDXL's size/crop conditioning of a pass made at size x size, as A1111 gives it
    (sd_models_xl.get_learned_conditioning: original = target = the pass's size, crop (sdxl_crop_top,
    sdxl_crop_left), default (0, 0); the hires pass's prompts are made at hr_upscale_to_x/y) and as stipple's
    time_ids: the pipeline arguments and the six time ids they make."""
    kwargs = dict(original_size=(size, size), crops_coords_top_left=(0, 0), target_size=(size, size))
    return kwargs, [*kwargs["original_size"], *kwargs["crops_coords_top_left"], *kwargs["target_size"]]


def two_pass_models(family):
    """(fixture, text-to-image pipeline class, img2img pipeline class, their components, cases) of the plain
    4-channel tiny model of `family` (`sd1`, `sdxl`)."""
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTokenizer

    fixture = os.path.join(FIXTURES, "tiny-sdxl" if family == "sdxl" else "tiny-sd15")
    unet, encoders, vae, sched = tiny_models(family)
    check_decoder(fixture, vae)
    assert unet.config.in_channels == 4
    toks = [CLIPTokenizer.from_pretrained(os.path.join(fixture, t)) for t in ["tokenizer", "tokenizer_2"][:len(encoders)]]
    if family == "sdxl":
        common = dict(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=toks[0],
                      tokenizer_2=toks[1], unet=unet, add_watermarker=False)
        return fixture, StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, common, sched, SDXL_CASES
    common = dict(vae=vae, text_encoder=encoders[0], tokenizer=toks[0], unet=unet, safety_checker=None,
                  feature_extractor=None, requires_safety_checker=False)
    return fixture, StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, common, sched, CASES


def two_pass_references(upscaler, family="sd1"):
    """The hires fix on the plain tiny model of `family` as two diffusers pipelines (item 3 of the module
    doc). On SDXL each pass gets its size conditioning explicitly (size_conditioning), recorded per image as
    `time_ids` {first, second}."""
    fixture, txt2img, img2img, common, sched, cases = two_pass_models(family)
    xl = family == "sdxl"

    def pipe(cls, slug):
        p = cls(scheduler=scheduler_for(sched, slug), **common)
        p.set_progress_bar_config(disable=True)
        return p

    def call(p, steps, **kwargs):
        g = torch.Generator("cpu").manual_seed(ref.IMAGE_SEED)
        with torch.no_grad():
            return p(ref.IMAGE_PROMPT, negative_prompt=ref.IMAGE_NEGATIVE, num_inference_steps=steps,
                     guidance_scale=7.0, generator=g, **kwargs).images

    images = []
    for upscaler_name, slug, hires_steps, denoise, scale in cases:
        target = int(SIZE * scale)
        (first_cond, first_ids), (second_cond, second_ids) = size_conditioning(SIZE), size_conditioning(target)
        first = pipe(txt2img, slug)
        first_kwargs = dict(height=SIZE, width=SIZE, **(first_cond if xl else {}))
        if upscaler_name in LATENT_MODES:
            latents = call(first, STEPS, output_type="latent", **first_kwargs)
            mode, aa = LATENT_MODES[upscaler_name]
            factor = SIZE // latents.shape[-1]
            image = F.interpolate(latents, size=(target // factor, target // factor), mode=mode, antialias=aa)
        else:
            picture = call(first, STEPS, **first_kwargs)[0]
            if upscaler_name == "Lanczos":
                image = picture.resize((target, target), Image.LANCZOS)
            else:
                image = run_upscaler(upscaler, picture)
        second = pipe(img2img, slug)
        out = call(second, hires_steps or STEPS, image=image, strength=denoise, **(second_cond if xl else {}))[0]
        assert out.size == (target, target)
        name = f"hires.{upscaler_name.replace(' ', '_').replace('(', '').replace(')', '')}.{slug}.png"
        out.save(os.path.join(fixture, "reference", name))
        images.append({"file": name, "upscaler": upscaler_name, "sampler": slug, "hires_steps": hires_steps,
                       "denoise": denoise, "scale": scale,
                       "model": "tiny-2x.onnx" if upscaler_name == "tiny-2x" else None})
        if xl:
            images[-1]["time_ids"] = {"first": first_ids, "second": second_ids}
    write_manifest(fixture, images)
    print(f"wrote {fixture}'s hires references")


def rebuilt_upscaler():
    """make_upscaler's model rebuilt from its seed, checked against its committed output."""
    torch.manual_seed(0)
    upscaler = TinyUpscaler().eval()
    init = Image.open(os.path.join(FIXTURES, "img2img", "init.png")).convert("RGB")
    committed = Image.open(os.path.join(FIXTURES, "upscaler", "init.2x.png"))
    if run_upscaler(upscaler, init).tobytes() != committed.tobytes():
        raise SystemExit("the rebuilt tiny upscaler differs from upscaler/init.2x.png")
    return upscaler


def main():
    if "--inpaint-unet-only" in sys.argv:
        upscaler = rebuilt_upscaler()
        for family in INPAINT_FAMILIES:
            inpaint_unet_references(upscaler, family)
        return
    if "--sdxl-only" in sys.argv:
        two_pass_references(rebuilt_upscaler(), "sdxl")
        return
    up_dir = os.path.join(FIXTURES, "upscaler")
    upscaler = make_upscaler(up_dir)
    make_wrong_upscaler(up_dir)
    init = Image.open(os.path.join(FIXTURES, "img2img", "init.png")).convert("RGB")
    run_upscaler(upscaler, init).save(os.path.join(up_dir, "init.2x.png"))
    interpolate_cases(up_dir)
    if "--upscaler-only" in sys.argv:
        return
    for family in ["sd1", "sdxl"]:
        two_pass_references(upscaler, family)
    for family in INPAINT_FAMILIES:
        inpaint_unet_references(upscaler, family)


if __name__ == "__main__":
    main()
