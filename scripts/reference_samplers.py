#!/usr/bin/env python3
"""Reference runs of the samplers and schedule types added after the first five (issue 22).

    reference_samplers.py --schedulers   # tests/fixtures/reference/samplers.json (closed-form model)
    reference_samplers.py --images       # <tiny fixture>/reference/samplers.json + image.*.png, SD1.5 and SDXL

--schedulers runs each diffusers scheduler class as reference_schedulers.py does (same closed-form fake
model, same recorded fields) for the new samplers and for every sampler x schedule type, plus the
case's `schedule` (slug) and `family`. --images rebuilds the tiny models exactly as
`export_model.py --tiny` does (it first checks that its UNet weights and one existing reference image come
out identical) and writes diffusers pipeline images (32x32, the reference prompt, seed and CFG of
diffusers_reference.py) of the grid: every sampler of this script (Euler, Euler a, Heun, LMS, DDIM,
DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE, UniPC, LCM) x every schedule type it accepts in stipple
(DDIM and LCM: automatic only; DPM++ 2M Karras: automatic and karras) x 4 and 8 steps, for tiny SD1.5
and tiny SDXL (`grid.<sampler>.<schedule>.<steps>.png`, listed in reference/samplers.json).
reference_samplers_more.py --images does the same for the other samplers.

How a schedule type reaches diffusers:
  karras, exponential, beta: the class's own use_karras_sigmas / use_exponential_sigmas /
      use_beta_sigmas (scipy needed for beta).
  sgm-uniform: timestep_spacing="trailing", which diffusers' scheduler docs give as A1111's
      "sgm_uniform" (A1111 and ComfyUI space the timesteps as linspace(999, 0, n+1)[:-1], fractional;
      trailing rounds them to integers).
  simple, ays, uniform: diffusers has no flag. The sigmas are computed here (below: simple as ComfyUI's
      `simple_scheduler`: every
      (1000/n)-th training sigma from the top; Align Your Steps: NVIDIA's published table, log-linear
      resampling to n+1 points as ComfyUI's `loglinear_interp`, last value dropped; uniform as
      k-diffusion's `DiscreteSchedule.get_sigmas(n)` (crowsonkb/k-diffusion, k_diffusion/external.py),
      A1111's "Uniform" and the "Automatic" of its Euler, Euler a, Heun and LMS: float32 timesteps
      torch.linspace(999, 0, n), log sigma interpolated linearly between the two neighbouring training
      sigmas) and handed to the class through its Karras path (the instance's `_convert_to_karras` returns
      them), so diffusers itself derives the timesteps and runs the steps.
  Euler a has no schedule flags in diffusers: its sigmas and timesteps are copied from an
      EulerDiscreteScheduler set up as above.
Align Your Steps tables: the first ten sigmas are diffusers' AysSchedules (the published values),
the eleventh (sigma_min) is the published 0.029, which diffusers replaces by 0.

Needs: torch, diffusers, scipy (the /work/venv ones). Run: /work/venv/bin/python scripts/reference_samplers.py --schedulers
"""
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sampler_args import parse_sampler_args, sampler_arg_parser  # noqa: E402


def arg_parser():
    return sampler_arg_parser(__doc__, "write tests/fixtures/reference/samplers.json",
                              "write the tiny fixtures' sampler images")


if __name__ == "__main__":
    ARGS = parse_sampler_args(arg_parser())  # --help and argument errors come before the heavy imports below

import inspect

import diffusers
import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, LCMScheduler, LMSDiscreteScheduler,
                       UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_utils import AysSchedules

from reference_schedulers import SD15, SHAPE, STEP_SAMPLE, f32, fake_model  # noqa: E402

# The tiny models run fastest on one thread, above all on a busy machine (the grid is ~500 images).
torch.set_num_threads(1)

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/reference/samplers.json"

# A1111 name -> (diffusers class, extra config); slugs as stipple's.
SAMPLERS = {
    "Euler": (EulerDiscreteScheduler, {}, "euler"),
    "Euler a": (EulerAncestralDiscreteScheduler, {}, "euler-a"),
    "Heun": (HeunDiscreteScheduler, {}, "heun"),
    "LMS": (LMSDiscreteScheduler, {}, "lms"),
    "DDIM": (DDIMScheduler, {}, "ddim"),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {}, "dpmpp-2m"),
    "DPM++ 2M SDE": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, "dpmpp-2m-sde"),
    "UniPC": (UniPCMultistepScheduler, {}, "unipc"),
    "LCM": (LCMScheduler, {}, "lcm"),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, "dpmpp-2m-karras"),
}
NEW = ["Heun", "LMS", "DPM++ 2M SDE", "UniPC", "LCM"]
SIGMA_SAMPLERS = ["Euler", "Euler a", "Heun", "LMS", "DPM++ 2M", "DPM++ 2M SDE", "UniPC"]
SCHEDULES = ["karras", "exponential", "sgm-uniform", "simple", "beta", "ays", "uniform"]
FLAGS = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas", "beta": "use_beta_sigmas"}
AYS = {
    "sd1": list(AysSchedules["StableDiffusionSigmas"][:10]) + [0.029],
    "sdxl": list(AysSchedules["StableDiffusionXLSigmas"][:10]) + [0.029],
}


def train_sigmas(sch):
    ac = sch.alphas_cumprod.numpy().astype(np.float64)
    return np.sqrt((1 - ac) / ac)


def custom_sigmas(schedule, family, steps, train):
    """The schedule types diffusers has no flag for, largest sigma first, without the final 0."""
    if schedule == "simple":
        ss = len(train) / steps
        return np.array([train[-(1 + int(x * ss))] for x in range(steps)])
    if schedule == "ays":
        table = np.array(AYS[family])
        if steps + 1 != len(table):
            xs = np.linspace(0, 1, len(table))
            ys = np.log(table[::-1])
            table = np.exp(np.interp(np.linspace(0, 1, steps + 1), xs, ys))[::-1]
        return table[:-1].copy()
    if schedule == "uniform":
        # k-diffusion's DiscreteSchedule.get_sigmas(n) / t_to_sigma, in its float32 arithmetic.
        log_sigmas = torch.tensor(train, dtype=torch.float32).log()
        t = torch.linspace(len(train) - 1, 0, steps)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp().double().numpy()
    raise ValueError(schedule)


def with_schedule(sch, schedule, family):
    """Sets `sch` (a fresh diffusers scheduler) to walk `schedule`; returns it."""
    if schedule == "automatic":
        return sch
    if schedule == "sgm-uniform":
        return sch.__class__.from_config(sch.config, timestep_spacing="trailing")
    if isinstance(sch, EulerAncestralDiscreteScheduler):
        donor = with_schedule(EulerDiscreteScheduler.from_config(sch.config), schedule, family)
        plain = sch.set_timesteps

        def set_timesteps(num_inference_steps, device=None, **kw):
            plain(num_inference_steps, device=device)
            donor.set_timesteps(num_inference_steps, device=device)
            sch.sigmas = donor.sigmas.clone()
            sch.timesteps = donor.timesteps.clone()

        sch.set_timesteps = set_timesteps
        return sch
    if schedule in FLAGS:
        return sch.__class__.from_config(sch.config, **{FLAGS[schedule]: True})
    sch = sch.__class__.from_config(sch.config, use_karras_sigmas=True)
    train = train_sigmas(sch)
    sch._convert_to_karras = lambda in_sigmas, num_inference_steps=None: custom_sigmas(
        schedule, family, num_inference_steps or sch.num_inference_steps, train)
    return sch


def make(name, schedule, family, config):
    cls, extra, _ = SAMPLERS[name]
    return with_schedule(cls.from_config({**config, **extra}), schedule, family)


def step_kwargs(sch, g):
    params = inspect.signature(sch.step).parameters
    kw = {}
    if "generator" in params:
        kw["generator"] = g
    if "eta" in params:
        kw["eta"] = 0.0
    return kw


def run(name, schedule, family, steps, overrides, seed):
    sch = make(name, schedule, family, {**SD15, **overrides})
    sch.set_timesteps(steps)
    g = torch.Generator("cpu").manual_seed(seed)
    init = float(sch.init_noise_sigma)
    latents = torch.randn(SHAPE, generator=g, dtype=torch.float32) * sch.init_noise_sigma
    divisors, per_step = [], []
    for t in sch.timesteps:
        x_in = sch.scale_model_input(latents, t)
        divisors.append(f32((latents.flatten()[0] / x_in.flatten()[0]).item()))
        out = fake_model(x_in, t)
        latents = sch.step(out, t, latents, return_dict=False, **step_kwargs(sch, g))[0]
        flat = latents.flatten()
        per_step.append([f32(flat[i].item()) for i in STEP_SAMPLE])
    sigmas = getattr(sch, "sigmas", None)
    has_sigmas = sigmas is not None and not isinstance(sch, (DDIMScheduler, LCMScheduler))
    return {
        "sampler": name, "schedule": schedule, "family": family, "steps": steps, "overrides": overrides,
        "seed": seed, "class": type(sch).__name__,
        "timesteps": [float(t) for t in sch.timesteps.tolist()],
        "sigmas": [f32(s) for s in sigmas.tolist()] if has_sigmas else None,
        "init_noise_sigma": f32(init),
        "input_divisors": divisors,
        "step_samples": per_step,
        "final": [f32(v) for v in latents.flatten().tolist()[::2]],
    }


def scheduler_cases():
    cases = [(n, "automatic", "sd1", s, {}) for n in NEW for s in (4, 8, 20)]
    cases += [(n, k, "sd1", s, {}) for n in SIGMA_SAMPLERS for k in SCHEDULES for s in (4, 8)]
    cases += [("Euler", "ays", "sdxl", s, {}) for s in (4, 10, 12)]
    cases += [("DPM++ 2M SDE", "ays", "sdxl", 7, {})]
    # The tiny fixtures' (and SD1.5's and SDXL's own) "leading" spacing, and v-prediction.
    leading = {"timestep_spacing": "leading"}
    cases += [(n, "automatic", "sd1", 6, leading) for n in NEW]
    cases += [(n, k, "sd1", 6, leading) for n in ("Euler", "DPM++ 2M SDE", "Heun") for k in SCHEDULES]
    cases += [(n, "automatic", "sd1", 8, {"prediction_type": "v_prediction"}) for n in NEW]
    return cases


def write_schedulers():
    cases = [run(*c, seed=2000 + i) for i, c in enumerate(scheduler_cases())]
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__, "shape": list(SHAPE),
            "step_sample_indices": STEP_SAMPLE, "final_stride": 2, "base_config": SD15, "ays": AYS}
    OUT.write_text(json.dumps({"meta": meta, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


GRID_STEPS = (4, 8)
GRID_SIZE = 32
# The samplers of this script's grid, and those that take no schedule type (stipple's
# `Sampler::takes_schedule`); DPM++ 2M Karras takes only its own.
GRID = ["Euler", "Euler a", "Heun", "LMS", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "UniPC", "LCM"]
NO_SCHEDULES = ["DDIM", "LCM", "DDPM", "TCD"]
OWN_SCHEDULE = {"DPM++ 2M Karras": ["karras"]}


def grid_cases(names):
    """Every sampler of `names` x every schedule type it accepts x GRID_STEPS: (name, schedule, steps)."""
    cases = []
    for name in names:
        kinds = [] if name in NO_SCHEDULES else OWN_SCHEDULE.get(name, SCHEDULES)
        cases += [(name, k, s) for k in ["automatic", *kinds] for s in GRID_STEPS]
    return cases


def grid_file(slug, schedule, steps):
    return f"grid.{slug}.{schedule}.{steps}.png"


def load_tiny(family):
    """The tiny model of `family` rebuilt (checked against the fixture): (reference folder, its
    scheduler, a function making a diffusers pipeline for a scheduler)."""
    from PIL import Image

    import model_folder
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers_reference import IMAGE_NEGATIVE, IMAGE_PROMPT, IMAGE_SEED, reference_image
    from transformers import CLIPTokenizer

    fixture = ROOT / "tests/fixtures" / ("tiny-sdxl" if family == "sdxl" else "tiny-sd15")
    ref = fixture / "reference"
    unet, encoders, vae, scheduler = model_folder.tiny_models(family)
    tok = CLIPTokenizer.from_pretrained(fixture / "tokenizer")

    def pipeline(sched):
        if family == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tok,
                tokenizer_2=CLIPTokenizer.from_pretrained(fixture / "tokenizer_2"), unet=unet, scheduler=sched,
                add_watermarker=False)
        else:
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoders[0], tokenizer=tok, unet=unet,
                                           scheduler=sched, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # The rebuilt model must be the fixture's: its UNet weights bit for bit, and one existing reference
    # image within rounding (a pixel value may land on the other side of .5 from run to run).
    from safetensors.torch import load_file
    stored = load_file(fixture / "unet" / "weights.safetensors")
    rebuilt = unet.state_dict()
    if set(stored) != set(rebuilt) or any(not torch.equal(v.float(), rebuilt[k].float()) for k, v in stored.items()):
        raise SystemExit(f"{fixture}: the rebuilt tiny UNet differs from unet/weights.safetensors")
    check = np.asarray(reference_image(pipeline(EulerDiscreteScheduler.from_config(scheduler.config)), 4))
    want = np.asarray(Image.open(ref / "image.euler.4.png").convert("RGB"))
    diff = np.abs(check.astype(int) - want.astype(int))
    if diff.mean() > 0.01 or diff.max() > 1:
        raise SystemExit(f"{fixture}: the rebuilt tiny model does not reproduce image.euler.4.png ({diff.mean()})")
    return ref, scheduler, pipeline


def write_images(family):
    from diffusers_reference import IMAGE_NEGATIVE, IMAGE_PROMPT, IMAGE_SEED, reference_image

    ref, scheduler, pipeline = load_tiny(family)
    images = []
    for name, schedule, steps in grid_cases(GRID):
        slug = SAMPLERS[name][2]
        file = grid_file(slug, schedule, steps)
        images.append({"file": file, "sampler": slug, "schedule": schedule, "steps": steps})
        if RESUME and (ref / file).exists():
            continue
        sched = make(name, schedule, family, dict(scheduler.config))
        reference_image(pipeline(sched), steps, height=GRID_SIZE, width=GRID_SIZE).save(ref / file)
    spec = {"prompt": IMAGE_PROMPT, "negative": IMAGE_NEGATIVE, "seed": IMAGE_SEED, "cfg": 7.0,
            "width": GRID_SIZE, "height": GRID_SIZE, "family": family, "images": images,
            "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "script": "scripts/reference_samplers.py --images"}}
    (ref / "samplers.json").write_text(json.dumps(spec, indent=1) + "\n")
    print(f"wrote {len(images)} images and samplers.json to {ref}")


RESUME = False

if __name__ == "__main__":
    RESUME = ARGS.resume
    if ARGS.schedulers:
        write_schedulers()
    if ARGS.images:
        os.environ.setdefault("PYTHONHASHSEED", "0")
        write_images("sd1")
        write_images("sdxl")
