#!/usr/bin/env python3
"""Reference images for A1111 prompt editing, alternation and `AND` (composable diffusion) on the tiny
fixtures.

    /work/venv/bin/python scripts/prompt_editing_reference.py PATH/TO/modules/prompt_parser.py [--sd15-only|--sdxl-only]

The per-step texts come from A1111's own parser (the file given; its code is not part of stipple, and it
needs `lark`): `get_multicond_prompt_list` splits the prompt into `AND` parts with weights and
`get_learned_conditioning_prompt_schedules` gives each part's (and the negative prompt's, never split)
schedule over the sampler's steps (doubled for Heun, A1111's step multiplier for second-order samplers).
At 0-based UNet call `c` the text is that of the first schedule entry ending at a step >= c, as A1111's
`reconstruct_cond_batch` picks it.

The sampling loop is written out here on diffusers' modules (the tiny fixture's, rebuilt as
`export_model.py --tiny` builds them): diffusers' `encode_prompt` for each text (short prompts without
emphasis, where A1111's encoding is diffusers'), the pipeline's latents and scheduler, and per call one
UNet batch [uncond, part 1, ..., part k] combined as A1111's `combine_denoised` does:
uncond + sum_i weight_i * cfg * (cond_i - uncond). Writes <fixture>/reference/prompt_editing.json and
the images it lists (PNG, 64x64).
"""
import importlib.util
import inspect
import json
import os
import sys

import torch

import diffusers_reference as ref
from img2img_reference import FIXTURES, check_decoder, scheduler_for
from model_folder import tiny_models

STEPS = 8
SEED = 42
CFG = 7.0
SD15_CASES = [
    # (sampler, prompt, negative)
    ("euler", "a [red fox:blue bird:0.5] in the snow", "blurry"),
    ("euler", "a red fox in the [snow:forest:3]", "[blurry:ugly:0.25]"),
    ("euler", "a [fox|cat] in the snow", "blurry"),
    ("euler", "a red fox :1.2 AND a snowy forest :0.6", "blurry"),
    ("euler", "a [fox:cat:0.5] in the snow AND [day|night] sky :0.7", "blurry AND ugly"),
    ("euler", "a [[red:white:2] fox::6] in the snow", ""),
    ("dpmpp-2m", "a [red fox:blue bird:0.5] in the snow", "blurry"),
    ("dpmpp-2m", "a [fox|cat] in the snow", "blurry"),
    ("dpmpp-2m", "a red fox :1.2 AND a snowy forest :0.6", "blurry"),
    ("euler-a", "a [fox:cat:0.5] in the snow AND [day|night] sky :0.7", "blurry"),
    ("heun", "a [red fox:blue bird:0.5] in the snow", "blurry"),
]
SDXL_CASES = [
    ("euler", "a [red fox:blue bird:0.5] in the snow", "blurry"),
    ("euler", "a [fox|cat] in the snow AND a forest :0.5", "[blurry:ugly:3]"),
]
SAMPLER_CLASSES = {"heun": ("HeunDiscreteScheduler", {})}


def load_parser(path):
    spec = importlib.util.spec_from_file_location("a1111_prompt_parser", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def schedules(pp, prompt, negative, steps):
    """[(weight, [[until, text], ...]) per AND part], [[until, text], ...] of the negative prompt."""
    (indexes,), flat, _ = pp.get_multicond_prompt_list([prompt])
    parts = [(flat[i], w) for i, w in indexes]
    texts = [t for t, _ in parts]
    per_part = pp.get_learned_conditioning_prompt_schedules(texts, steps)
    neg = pp.get_learned_conditioning_prompt_schedules([negative], steps)[0]
    return [(w, s) for (_, w), s in zip(parts, per_part)], neg


def pick(schedule, call):
    """A1111's reconstruct_cond_batch: the first entry that ends at a step >= call (else the first)."""
    for until, text in schedule:
        if call <= until:
            return text
    return schedule[0][1]


def make_scheduler(base, slug):
    import diffusers

    if slug in SAMPLER_CLASSES:
        name, extra = SAMPLER_CLASSES[slug]
        return getattr(diffusers, name).from_config(base.config, **extra)
    return scheduler_for(base, slug)


class Encoder:
    """diffusers' prompt encoding, memoised per text; SDXL gives (context, pooled) and zeros for an
    empty negative prompt (force_zeros_for_empty_prompt)."""

    def __init__(self, pipe, sdxl):
        self.pipe, self.sdxl, self.memo = pipe, sdxl, {}

    def __call__(self, text, zeros=False):
        if (text, zeros) not in self.memo:
            with torch.no_grad():
                if self.sdxl:
                    c, _, p, _ = self.pipe.encode_prompt(text, device="cpu", num_images_per_prompt=1,
                                                         do_classifier_free_guidance=False)
                    if zeros:
                        c, p = torch.zeros_like(c), torch.zeros_like(p)
                else:
                    c = self.pipe.encode_prompt(text, "cpu", 1, False)[0]
                    p = None
            self.memo[(text, zeros)] = (c, p)
        return self.memo[(text, zeros)]


def sample(pipe, sdxl, sched, prompt, negative, pp):
    """One image: A1111's per-call texts, composable CFG, the pipeline's latents and decoding."""
    sched.set_timesteps(STEPS)
    timesteps = sched.timesteps
    sched_steps = 2 * STEPS if len(timesteps) > STEPS else STEPS
    parts, neg = schedules(pp, prompt, negative, sched_steps)
    encode = Encoder(pipe, sdxl)
    zero_negative = sdxl and negative.strip() == ""
    g = torch.Generator("cpu").manual_seed(SEED)
    with torch.no_grad():
        latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, 64, 64, torch.float32, "cpu", g)
        used = []
        for call, t in enumerate(timesteps):
            rows = [encode(pick(neg, call), zeros=zero_negative)]
            rows += [encode(pick(s, call)) for _, s in parts]
            used.append([pick(neg, call)] + [pick(s, call) for _, s in parts])
            k = len(rows)
            x = sched.scale_model_input(torch.cat([latents] * k), t)
            context = torch.cat([c for c, _ in rows])
            kwargs = {}
            if sdxl:
                time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * k)
                kwargs["added_cond_kwargs"] = {"text_embeds": torch.cat([p for _, p in rows]),
                                               "time_ids": time_ids}
            out = pipe.unet(x, t, encoder_hidden_states=context, **kwargs).sample
            uncond = out[0:1]
            guided = uncond.clone()
            for j, (w, _) in enumerate(parts):
                guided += (out[1 + j:2 + j] - uncond) * (w * CFG)
            # The pipeline hands its generator to schedulers whose step takes one.
            extra = {"generator": g} if "generator" in inspect.signature(sched.step).parameters else {}
            latents = sched.step(guided, t, latents, **extra).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        return pipe.image_processor.postprocess(image, output_type="pil")[0], used


def write(fixture, pipe_for, cases, sdxl, pp):
    out = os.path.join(fixture, "reference")
    images = []
    for n, (slug, prompt, negative) in enumerate(cases):
        pipe = pipe_for(slug)
        img, used = sample(pipe, sdxl, pipe.scheduler, prompt, negative, pp)
        name = f"prompt_editing.{n}.{slug}.png"
        img.save(os.path.join(out, name))
        images.append({"file": name, "sampler": slug, "prompt": prompt, "negative": negative,
                       "texts_per_call": used})
        print(name, prompt, "|", negative)
    import diffusers

    meta = {"seed": SEED, "cfg": CFG, "steps": STEPS, "width": 64, "height": 64,
            "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__}}
    with open(os.path.join(out, "prompt_editing.json"), "w") as f:
        json.dump(dict(meta, images=images), f, indent=1)


def main():
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        raise SystemExit(__doc__)
    pp = load_parser(args[0])
    sd15_extra = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if "--sdxl-only" not in sys.argv:
        write_family(pp, "tiny-sd15", "sd1", StableDiffusionPipeline, sd15_extra, SD15_CASES)
    if "--sd15-only" not in sys.argv:
        write_family(pp, "tiny-sdxl", "sdxl", StableDiffusionXLPipeline, dict(add_watermarker=False),
                     SDXL_CASES)
    print("wrote the prompt editing references")


def write_family(pp, name, family, pipeline_class, extra, cases):
    """The references of one tiny fixture: its modules rebuilt, one pipeline per sampler."""
    from transformers import CLIPTokenizer

    fixture = os.path.join(FIXTURES, name)
    unet, encoders, vae, sched = tiny_models(family)
    check_decoder(fixture, vae)
    parts = dict(vae=vae, unet=unet, **extra)
    for i, te in enumerate(encoders):
        suffix = f"_{i + 1}" if i else ""
        parts["text_encoder" + suffix] = te
        parts["tokenizer" + suffix] = CLIPTokenizer.from_pretrained(os.path.join(fixture, "tokenizer" + suffix))

    def make(slug):
        p = pipeline_class(scheduler=make_scheduler(sched, slug), **parts)
        p.set_progress_bar_config(disable=True)
        return p

    write(fixture, make, cases, family == "sdxl", pp)


if __name__ == "__main__":
    main()
