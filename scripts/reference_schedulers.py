#!/usr/bin/env python3
"""Reference runs of the diffusers schedulers stipple reimplements (src/pipeline/schedulers/).

Writes tests/fixtures/reference/schedulers.json. For each A1111 sampler (Euler, Euler a, DDIM,
DPM++ 2M, DPM++ 2M Karras) and step count, the scheduler is made exactly as a diffusers
StableDiffusionPipeline would get it: XScheduler.from_config(SD1.5's PNDM scheduler_config, plus the
case's overrides), set_timesteps(steps). Recorded: timesteps, sigmas, init_noise_sigma, the
scale_model_input divisor per step, and a full sampling loop on a (1,4,8,8) latent:
  latents = randn(shape, generator=Generator().manual_seed(seed)) * init_noise_sigma
  per step: x_in = scale_model_input(latents, t); model_output = fake_model(x_in, t);
            latents = step(model_output, t, latents, generator=<same generator>, [eta=0.0])
with the closed-form fake model (computed in float64, stored as float32; Rust computes the same)
  model_output[k] = 0.1 * x_in[k] + cos(t / 100 + 0.01 * k).
Per step it keeps a sample of output values; the final latents are kept every 2nd element.
Needs: torch, diffusers (the /work/venv ones). Run: /work/venv/bin/python scripts/reference_schedulers.py
"""
import argparse
import json
import pathlib


def arg_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()  # --help and argument errors come before the heavy imports below

import diffusers
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/reference/schedulers.json"

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
SD15 = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}
SAMPLERS = {
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}
SHAPE = (1, 4, 8, 8)
STEP_SAMPLE = [0, 1, 63, 64, 130, 200, 254, 255]  # indices kept per step
CASES = [(name, steps, {}) for name in SAMPLERS for steps in (4, 8, 20)]
# Config variants other models ship: v-prediction (SD2 768) and trailing spacing.
CASES += [(name, 8, {"prediction_type": "v_prediction"}) for name in SAMPLERS]
CASES += [(name, 5, {"timestep_spacing": "trailing"}) for name in SAMPLERS]
CASES += [(name, 6, {"timestep_spacing": "leading"}) for name in SAMPLERS]


def f32(x):
    """A float32 value as the shortest decimal that reads back to it."""
    return float(f"{x:.9g}")


def fake_model(x_in, t):
    k = torch.arange(x_in.numel(), dtype=torch.float64).reshape(x_in.shape)
    return (0.1 * x_in.double() + torch.cos(float(t) / 100 + 0.01 * k)).float()


def run(name, steps, overrides, seed):
    cls, extra = SAMPLERS[name]
    sch = cls.from_config({**SD15, **overrides}, **extra)
    sch.set_timesteps(steps)
    g = torch.Generator("cpu").manual_seed(seed)
    init = float(sch.init_noise_sigma)
    latents = torch.randn(SHAPE, generator=g, dtype=torch.float32) * sch.init_noise_sigma
    step_kwargs = {"eta": 0.0} if cls is DDIMScheduler else {}
    divisors, per_step = [], []
    for t in sch.timesteps:
        x_in = sch.scale_model_input(latents, t)
        # The divisor diffusers applied, recovered from one element (all are scaled alike).
        divisors.append(f32((latents.flatten()[0] / x_in.flatten()[0]).item()))
        out = fake_model(x_in, t)
        latents = sch.step(out, t, latents, generator=g, return_dict=False, **step_kwargs)[0]
        flat = latents.flatten()
        per_step.append([f32(flat[i].item()) for i in STEP_SAMPLE])
    sigmas = getattr(sch, "sigmas", None)
    return {
        "sampler": name, "steps": steps, "overrides": overrides, "seed": seed,
        "class": cls.__name__, "timestep_spacing": sch.config.timestep_spacing,
        "timesteps": [float(t) for t in sch.timesteps.tolist()],
        "sigmas": None if cls is DDIMScheduler else [f32(s) for s in sigmas.tolist()],
        "init_noise_sigma": f32(init),
        "input_divisors": divisors,
        "step_samples": per_step,
        "final": [f32(v) for v in latents.flatten().tolist()[::2]],
    }


def main():
    cases = [run(name, steps, ov, seed=1000 + i) for i, (name, steps, ov) in enumerate(CASES)]
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__, "shape": list(SHAPE),
            "step_sample_indices": STEP_SAMPLE, "final_stride": 2, "base_config": SD15}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"meta": meta, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
