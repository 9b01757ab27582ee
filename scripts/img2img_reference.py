#!/usr/bin/env python3
"""diffusers' image-to-image and inpainting references for the tiny fixtures.

    /work/venv/bin/python scripts/img2img_reference.py [--sd15-only | --inpaint-unet-only]   # (torch, diffusers)

Writes tests/fixtures/img2img/ (init.png, a 64x64 test picture; mask.png, white = repaint; init_rgba.png,
init.png with mask.png's inverse as alpha; small.webp and cmyk.jpg for the decoders) and, per fixture, <fixture>/reference/img2img.json with the
images it lists: StableDiffusionImg2ImgPipeline / StableDiffusionXLImg2ImgPipeline and, for tiny SD1.5,
StableDiffusionInpaintPipeline on the 4-channel UNet (latent blending), each at several `strength`
values and samplers (also with the mask blurred first, as A1111 and diffusers' `mask_processor.blur`
do: PIL's GaussianBlur, the blurred masks kept as mask_blur4.png and mask_blur8.png), and the same with
`padding_mask_crop` ("only masked", only_masked.json, mask_small.png); for tiny-sd15-inpaint the same
pipeline on its 9-channel UNet (inpaint_unet_references); for tiny SDXL StableDiffusionXLImg2ImgPipeline
and StableDiffusionXLInpaintPipeline (4-channel UNet, latent blending). The tiny modules are rebuilt as
`export_model.py --tiny` builds them (the VAE decoder is checked bit for bit against the fixture's
weights first).

The init latents are diffusers' default: `vae.encode(x).latent_dist.sample(generator)` with the
pipeline's CPU generator (seeded IMAGE_SEED), so the generator's first draw is the posterior sample and
its second the noise that `scheduler.add_noise` mixes in; stipple draws them in the same order.
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

import diffusers_reference as ref
from model_folder import ROOT, tiny_models
from onnx_export import component_params
from safetensors.torch import load_file

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
STEPS = 8
SD15_CASES = [(s, d) for s in ("euler-a", "ddim", "dpmpp-2m") for d in (0.3, 0.75, 1.0)]
SDXL_CASES = [(s, d) for s in ("euler", "euler-a") for d in (0.5, 0.8)]
INPAINT_CASES = [(s, d) for s in ("euler-a", "ddim") for d in (0.75, 1.0)]
# Inpainting with the mask blurred first (A1111's "Mask blur", diffusers' `mask_processor.blur`).
BLUR_CASES = [("euler-a", 0.75, 4), ("ddim", 1.0, 8)]
BLURS = (4, 8)
SDXL_INPAINT_CASES = [(s, d) for s in ("euler", "euler-a") for d in (0.75, 1.0)]
# "Only masked" (padding_mask_crop): sampler, strength, padding, job size.
ONLY_MASKED_CASES = [("euler-a", 0.75, 8, (64, 64)), ("ddim", 1.0, 4, (64, 64)), ("euler", 0.75, 8, (64, 32))]
ONLY_MASKED_UNET_CASES = [("euler-a", 0.75, 8, (64, 64))]


def test_pictures(out):
    """A 64x64 picture with smooth gradients and hard edges (so resizing and the VAE both matter), a mask
    (white = repaint: a rectangle and a disc) and the picture with the mask's inverse as alpha."""
    os.makedirs(out, exist_ok=True)
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    r = 255 * x / 63
    g = 255 * y / 63
    b = 128 + 100 * np.sin(x / 6) * np.cos(y / 9)
    img = np.stack([r, g, b], axis=-1)
    img[40:56, 8:28] = [250, 240, 30]
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(os.path.join(out, "init.png"))
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 30:58] = 255
    mask[((x - 20) ** 2 + (y - 44) ** 2) < 100] = 255
    Image.fromarray(mask, "L").save(os.path.join(out, "mask.png"))
    rgba = np.concatenate([img, (255 - mask)[..., None]], axis=-1)
    Image.fromarray(rgba, "RGBA").save(os.path.join(out, "init_rgba.png"))
    # Other formats: a lossless WebP of the picture at 16x16 and an 8x8 CMYK JPEG (pure red).
    Image.fromarray(img, "RGB").resize((16, 16)).save(os.path.join(out, "small.webp"), lossless=True)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(os.path.join(out, "cmyk.jpg"), quality=95)
    # A small mask for "only masked" (its padded box is a part of the picture): a disc and a bar.
    small = np.zeros((64, 64), np.uint8)
    small[((x - 40) ** 2 + (y - 20) ** 2) < 36] = 255
    small[24:28, 30:42] = 255
    Image.fromarray(small, "L").save(os.path.join(out, "mask_small.png"))
    # The mask as diffusers' VaeImageProcessor.blur (PIL's GaussianBlur, sigma = the blur) leaves it.
    from diffusers.image_processor import VaeImageProcessor
    for blur in BLURS:
        VaeImageProcessor.blur(Image.fromarray(mask, "L"), blur).save(os.path.join(out, f"mask_blur{blur}.png"))
    return Image.fromarray(img, "RGB"), Image.fromarray(mask, "L")


def check_decoder(fixture, vae):
    stored = load_file(os.path.join(fixture, "vae_decoder", "weights.safetensors"))
    for name, p in component_params("vae_decoder", vae).items():
        if not torch.equal(p.detach().to(stored[name].dtype), stored[name]):
            raise SystemExit(f"{fixture}: rebuilt {name} differs from the fixture")


def scheduler_for(base, slug):
    """The scheduler for `slug`; DDIM without x0 clipping, as SD1.5's shipped config has it and as the
    text-to-image and img2img pipelines force it (the inpaint pipeline keeps the class default, True,
    when the config does not say, as the tiny fixture's does not)."""
    import diffusers

    cls_name, extra = ref.SCHEDULERS[slug]
    if cls_name == "DDIMScheduler":
        extra = dict(extra, clip_sample=False)
    return getattr(diffusers, cls_name).from_config(base.config, **extra)


def run(pipe, **kwargs):
    g = torch.Generator("cpu").manual_seed(ref.IMAGE_SEED)
    with torch.no_grad():
        return pipe(ref.IMAGE_PROMPT, negative_prompt=ref.IMAGE_NEGATIVE, num_inference_steps=STEPS,
                    guidance_scale=7.0, generator=g, **kwargs).images[0]


def write(fixture, cases, make_pipe, kind, **kwargs):
    out = os.path.join(fixture, "reference")
    images = []
    for slug, strength in cases:
        img = run(make_pipe(slug), strength=strength, **kwargs)
        name = f"{kind}.{slug}.{strength}.png"
        img.save(os.path.join(out, name))
        images.append({"file": name, "sampler": slug, "denoise": strength})
    return images


def blur_references(fixture, make_pipe, init, mask):
    """The inpainting pipeline given the mask blurred by `mask_processor.blur` (the pipeline then makes
    it binary at 0.5), as stipple's `mask_blur` does inside the job."""
    from diffusers.image_processor import VaeImageProcessor

    out = os.path.join(fixture, "reference")
    images = []
    for slug, strength, blur in BLUR_CASES:
        img = run(make_pipe(slug), strength=strength, image=init, mask_image=VaeImageProcessor.blur(mask, blur),
                  height=64, width=64)
        name = f"inpaint.{slug}.{strength}.blur{blur}.png"
        img.save(os.path.join(out, name))
        images.append({"file": name, "sampler": slug, "denoise": strength, "mask": "mask.png", "mask_blur": blur})
    return images


def only_masked_references(fixture, make_pipe, cases, init, meta):
    """StableDiffusionInpaintPipeline with `padding_mask_crop` (A1111's "Only masked"): the mask's box
    plus the padding, widened to the job's aspect, is cropped, redrawn at the job's size and pasted back
    over the picture (`apply_overlay`); listed in <fixture>/reference/only_masked.json."""
    mask = Image.open(os.path.join(FIXTURES, "img2img", "mask_small.png"))
    out = os.path.join(fixture, "reference")
    images = []
    for slug, strength, pad, (w, h) in cases:
        img = run(make_pipe(slug), strength=strength, image=init, mask_image=mask, height=h, width=w,
                  padding_mask_crop=pad)
        name = f"only_masked.{slug}.{strength}.pad{pad}.{w}x{h}.png"
        img.save(os.path.join(out, name))
        images.append({"file": name, "sampler": slug, "denoise": strength, "padding": pad, "width": w,
                       "height": h, "mask": "mask_small.png"})
    with open(os.path.join(out, "only_masked.json"), "w") as f:
        json.dump(dict(meta, images=images), f, indent=1)


def inpaint_unet_references(init, mask, meta):
    """tiny-sd15-inpaint (9-channel UNet): StableDiffusionInpaintPipeline concatenates the mask and the
    masked picture's latents to the UNet input and does not blend; with the mask and with none (an
    all-white mask, A1111's reading of a 9-channel model given no mask)."""
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTokenizer

    fixture = os.path.join(FIXTURES, "tiny-sd15-inpaint")
    if not os.path.isdir(fixture):
        return
    os.makedirs(os.path.join(fixture, "reference"), exist_ok=True)
    unet, (te,), vae, sched = tiny_models("sd1-inpaint")
    check_decoder(fixture, vae)
    assert unet.config.in_channels == 9
    tok = CLIPTokenizer.from_pretrained(os.path.join(fixture, "tokenizer"))

    def make(slug):
        p = StableDiffusionInpaintPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                           scheduler=scheduler_for(sched, slug), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        return p

    images = [dict(c, mask="mask.png") for c in
              write(fixture, INPAINT_CASES, make, "inpaint", image=init, mask_image=mask, height=64, width=64)]
    white = Image.new("L", (64, 64), 255)
    images += [dict(c, mask=None) for c in
               write(fixture, [("euler-a", 0.75)], make, "nomask", image=init, mask_image=white, height=64,
                     width=64)]
    with open(os.path.join(fixture, "reference", "img2img.json"), "w") as f:
        json.dump(dict(meta, images=images), f, indent=1)
    only_masked_references(fixture, make, ONLY_MASKED_UNET_CASES, init, meta)


def main():
    import diffusers
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLImg2ImgPipeline,
    )
    from transformers import CLIPTokenizer

    init, mask = test_pictures(os.path.join(FIXTURES, "img2img"))

    sd15 = os.path.join(FIXTURES, "tiny-sd15")
    unet, (te,), vae, sched = tiny_models("sd1")
    check_decoder(sd15, vae)
    tok = CLIPTokenizer.from_pretrained(os.path.join(sd15, "tokenizer"))
    common = dict(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, safety_checker=None,
                  feature_extractor=None, requires_safety_checker=False)

    def sd_pipe(cls):
        def make(slug):
            p = cls(scheduler=scheduler_for(sched, slug), **common)
            p.set_progress_bar_config(disable=True)
            return p
        return make

    images = write(sd15, SD15_CASES, sd_pipe(StableDiffusionImg2ImgPipeline), "img2img", image=init)
    images += [dict(c, mask="mask.png") for c in
               write(sd15, INPAINT_CASES, sd_pipe(StableDiffusionInpaintPipeline), "inpaint", image=init,
                     mask_image=mask, height=64, width=64)]
    images += blur_references(sd15, sd_pipe(StableDiffusionInpaintPipeline), init, mask)
    meta = {"prompt": ref.IMAGE_PROMPT, "negative": ref.IMAGE_NEGATIVE, "seed": ref.IMAGE_SEED, "cfg": 7.0,
            "steps": STEPS, "width": 64, "height": 64, "init": "init.png",
            "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__}}
    with open(os.path.join(sd15, "reference", "img2img.json"), "w") as f:
        json.dump(dict(meta, images=images), f, indent=1)
    only_masked_references(sd15, sd_pipe(StableDiffusionInpaintPipeline), ONLY_MASKED_CASES, init, meta)

    if "--sd15-only" in sys.argv:
        return
    inpaint_unet_references(init, mask, meta)
    if "--inpaint-unet-only" in sys.argv:
        return
    sdxl = os.path.join(FIXTURES, "tiny-sdxl")
    unet, (te1, te2), vae, sched = tiny_models("sdxl")
    check_decoder(sdxl, vae)
    tok1 = CLIPTokenizer.from_pretrained(os.path.join(sdxl, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(sdxl, "tokenizer_2"))

    def xl_pipe(slug):
        p = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                             tokenizer_2=tok2, unet=unet, scheduler=scheduler_for(sched, slug),
                                             add_watermarker=False)
        p.set_progress_bar_config(disable=True)
        return p

    def xl_inpaint_pipe(slug):
        from diffusers import StableDiffusionXLInpaintPipeline

        p = StableDiffusionXLInpaintPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                             tokenizer_2=tok2, unet=unet, scheduler=scheduler_for(sched, slug),
                                             add_watermarker=False)
        p.set_progress_bar_config(disable=True)
        return p

    assert unet.config.in_channels == 4
    images = write(sdxl, SDXL_CASES, xl_pipe, "img2img", image=init)
    images += [dict(c, mask="mask.png") for c in
               write(sdxl, SDXL_INPAINT_CASES, xl_inpaint_pipe, "inpaint", image=init, mask_image=mask,
                     height=64, width=64)]
    with open(os.path.join(sdxl, "reference", "img2img.json"), "w") as f:
        json.dump(dict(meta, images=images), f, indent=1)
    print("wrote the img2img references")


if __name__ == "__main__":
    main()
