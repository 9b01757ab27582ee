#!/usr/bin/env python3
"""Reference runs of the samplers of issue 22's second part: DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE,
DPM++ 3M SDE, DEIS, DDPM, TCD and Euler CFG++.

    reference_samplers_more.py --schedulers   # tests/fixtures/reference/samplers_more.json (closed-form model)
    reference_samplers_more.py --images       # <tiny fixture>/reference/samplers_more.json + image.*.png
    reference_samplers_more.py --brownian     # <tiny fixture>/reference/samplers_brownian.json + images

--schedulers runs each sampler as reference_samplers.py does (same closed-form fake model, same
recorded fields, schedule types set up the same way) for every sampler x schedule type it takes at 4 and
8 steps, plus leading spacing and v-prediction. --images writes the grid of these samplers, as
reference_samplers.py --images does for the others: every sampler x every schedule type it accepts in
stipple (DDPM and TCD: automatic only) x 4 and 8 steps, pipeline images of tiny SD1.5 and tiny SDXL at
32x32 with the reference prompt and seed of diffusers_reference.py (`grid.<sampler>.<schedule>.<steps>.png`,
listed in reference/samplers_more.json). The SDE samplers there use diffusers' per-step noise.

Where each reference comes from:
  DPM2, DPM2 a, DPM++ 3M SDE, DEIS, DDPM, TCD: diffusers' KDPM2DiscreteScheduler,
      KDPM2AncestralDiscreteScheduler, DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++",
      solver_order=3), DEISMultistepScheduler, DDPMScheduler, TCDScheduler (step eta = gamma = 0.3, the
      class default; the pipeline is given eta=0.3, as its own default of 0 would turn TCD deterministic).
  DPM++ 2S a: diffusers has none. `DpmPp2sAncestral` below re-implements k-diffusion's
      `sample_dpmpp_2s_ancestral` (crowsonkb/k-diffusion, k_diffusion/sampling.py; eta=1, s_noise=1, noise
      torch.randn from the run's generator) as a diffusers-style scheduler over EulerDiscreteScheduler's
      sigmas (so schedule types apply as for Euler); the midpoint call's timestep is `_sigma_to_t`.
  DPM++ SDE: diffusers' DPMSolverSDEScheduler, with its Brownian-tree noise sampler replaced by
      `SeededBrownian` below: the same Brownian motion W(sigma), sampled at the two points a step queries from
      the run's generator (two standard normals per step) instead of torchsde's tree. Same law, not the
      same numbers: torchsde derives its values from its own seeded tree of PRNG splits (and diffusers
      seeds it from the global RNG when noise_sampler_seed is unset).
  Euler CFG++: ComfyUI's `sample_euler_cfg_pp` (comfyanonymous/ComfyUI, comfy/k_diffusion/sampling.py),
      re-implemented below as `EulerCfgPp` over EulerDiscreteScheduler's sigmas; in the pipeline a forward
      hook on the UNet hands it the unconditional prediction. Guidance 1.5 (CFG++ is meant for small scales).

--brownian: the SDE samplers with A1111's noise (k-diffusion's BrownianTreeNoiseSampler, torchsde's Brownian
tree seeded with the image seed; stipple's default `--sde-noise brownian`), against `with_tree_noise` below:
  DPM++ SDE: diffusers' DPMSolverSDEScheduler itself, its own torchsde tree seeded with noise_sampler_seed =
      the image seed (the same tree and queries as k-diffusion's sample_dpmpp_sde).
  DPM++ 2M SDE, DPM++ 3M SDE: diffusers' DPMSolverMultistepScheduler with each step's variance_noise taken
      from `TreeNoise` (scripts/reference_brownian.py) over (sigma_i, sigma_i+1), the query of k-diffusion's
      sample_dpmpp_2m_sde / sample_dpmpp_3m_sde (none on the last step, whose sigma_next is 0).
The images written by --images keep diffusers' per-step generator noise (stipple's `--sde-noise step`).

Needs: torch, diffusers, scipy, torchsde (the /work/venv ones).
Run: /work/venv/bin/python scripts/reference_samplers_more.py --schedulers --images
"""
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sampler_args import parse_sampler_args, sampler_arg_parser  # noqa: E402


def arg_parser():
    ap = sampler_arg_parser(__doc__, "write tests/fixtures/reference/samplers_more.json",
                            "write the tiny fixtures' images of these samplers")
    ap.add_argument("--brownian", action="store_true",
                    help="write the tiny fixtures' SDE sampler images with Brownian-tree noise")
    return ap


if __name__ == "__main__":
    # --help and argument errors come before the heavy imports below
    ARGS = parse_sampler_args(arg_parser(), "brownian")

import diffusers
import numpy as np
import torch
from diffusers import (DDPMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler,
                       DPMSolverSDEScheduler, EulerDiscreteScheduler, KDPM2AncestralDiscreteScheduler,
                       KDPM2DiscreteScheduler, TCDScheduler)

import reference_samplers as rs  # noqa: E402
from reference_schedulers import SD15, SHAPE, STEP_SAMPLE, f32, fake_model  # noqa: E402
from reference_brownian import TreeNoise  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/reference/samplers_more.json"
TCD_GAMMA = 0.3


class TwoCalls(EulerDiscreteScheduler):
    """Euler's sigmas (schedule types included) walked with a second UNet call per step at a midpoint:
    calls at [s0, m0, s1, m1, ..., s(n-1)], the last step an Euler step to 0. `mid(s, s_next)` gives m."""

    def set_timesteps(self, num_inference_steps, device=None, **kw):
        super().set_timesteps(num_inference_steps, device=device)
        base, ts = self.sigmas.float(), self.timesteps
        sig = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        log_sigmas = np.log(np.array(sig))
        calls, times = [], []
        for j in range(num_inference_steps):
            calls.append(base[j])
            times.append(float(ts[j]))
            if j + 1 < num_inference_steps:
                m = self.mid(base[j], base[j + 1])
                calls.append(m)
                times.append(float(self._sigma_to_t(np.array(m.item()), log_sigmas)))
        self.call_sigmas = torch.stack(calls + [torch.tensor(0.0)])
        self.timesteps = torch.tensor(times, dtype=torch.float32)
        self.k = 0
        self.start = None

    def scale_model_input(self, sample, timestep):
        return sample / ((self.call_sigmas[self.k] ** 2 + 1) ** 0.5)

    def denoised(self, sample, model_output, sigma):
        if self.config.prediction_type == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        return sample - sigma * model_output


def ancestral_step(sigma_from, sigma_to, eta=1.0):
    """k-diffusion's get_ancestral_step."""
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def t_fn(sigma):
    return sigma.log().neg()


def sigma_fn(t):
    return t.neg().exp()


class DpmPp2sAncestral(TwoCalls):
    """k-diffusion's sample_dpmpp_2s_ancestral (eta=1, s_noise=1), one UNet call per step() call."""

    @staticmethod
    def mid(sigma, sigma_next):
        sigma_down, _ = ancestral_step(sigma, sigma_next)
        t, t_next = t_fn(sigma), t_fn(sigma_down)
        return sigma_fn(t + 0.5 * (t_next - t))

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        k, sig = self.k, self.call_sigmas
        self.k += 1
        if k % 2 == 0 and k + 2 >= len(sig):  # the last step: Euler to 0 (sigma_down == 0)
            sigma = sig[k]
            d = (sample - self.denoised(sample, model_output, sigma)) / sigma
            return (sample + d * (0.0 - sigma),)
        if k % 2 == 0:
            sigma, sigma_next = sig[k], sig[k + 2]
            denoised = self.denoised(sample, model_output, sigma)
            sigma_down, _ = ancestral_step(sigma, sigma_next)
            t, t_next = t_fn(sigma), t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            self.start = sample
            return ((sigma_fn(s) / sigma_fn(t)) * sample - (-h * r).expm1() * denoised,)
        sigma, mid, sigma_next = sig[k - 1], sig[k], sig[k + 1]
        denoised_2 = self.denoised(sample, model_output, mid)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
        t, t_next = t_fn(sigma), t_fn(sigma_down)
        h = t_next - t
        x = (sigma_fn(t_next) / sigma_fn(t)) * self.start - (-h).expm1() * denoised_2
        noise = torch.randn(sample.shape, generator=generator, dtype=torch.float32)
        return (x + noise * 1.0 * sigma_up,)


class EulerCfgPp(EulerDiscreteScheduler):
    """ComfyUI's sample_euler_cfg_pp: x_next = denoised + (x - uncond_denoised) / sigma * sigma_next, with
    `uncond` (the unconditional UNet output of this step) set before each step."""

    uncond = None

    def step(self, model_output, timestep, sample, return_dict=True, **kw):
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        if self.config.prediction_type == "v_prediction":
            def x0(out):
                return out * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            def x0(out):
                return sample - sigma * out
        uncond = model_output if self.uncond is None else self.uncond
        d = (sample - x0(uncond)) / sigma
        self._step_index += 1
        return (x0(model_output) + d * sigma_next,)


class SeededBrownian:
    """A Brownian motion W(sigma) queried as DPMSolverSDEScheduler queries its noise sampler: per step
    (sigma, sigma_mid) and then (sigma, sigma_next), each increment over the square root of its length.
    Two standard normals per step from `generator`: z1 for [sigma_mid, sigma], z2 for [sigma_next, sigma_mid]."""

    def __init__(self, generator, shape):
        self.g, self.shape, self.pending = generator, shape, None

    def __call__(self, sigma, sigma_next):
        if self.pending is None:
            z1 = torch.randn(self.shape, generator=self.g, dtype=torch.float32)
            z2 = torch.randn(self.shape, generator=self.g, dtype=torch.float32)
            self.pending = (sigma_next, z1, z2)
            return z1
        mid, z1, z2 = self.pending
        self.pending = None
        a, b = sigma - mid, mid - sigma_next
        return (a.sqrt() * z1 + b.sqrt() * z2) / (sigma - sigma_next).sqrt()


def with_seeded_brownian(sch, generator, shape):
    """Installs SeededBrownian on a DPMSolverSDEScheduler after each set_timesteps (which clears it)."""
    plain = sch.set_timesteps

    def set_timesteps(*a, **kw):
        plain(*a, **kw)
        sch.noise_sampler = SeededBrownian(generator, shape)

    sch.set_timesteps = set_timesteps
    return sch


MORE = {
    "DPM2": (KDPM2DiscreteScheduler, {}, "dpm2"),
    "DPM2 a": (KDPM2AncestralDiscreteScheduler, {}, "dpm2-a"),
    "DPM++ 2S a": (DpmPp2sAncestral, {}, "dpmpp-2s-a"),
    "DPM++ SDE": (DPMSolverSDEScheduler, {}, "dpmpp-sde"),
    "DPM++ 3M SDE": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
                     "dpmpp-3m-sde"),
    "DEIS": (DEISMultistepScheduler, {}, "deis"),
    "DDPM": (DDPMScheduler, {}, "ddpm"),
    "TCD": (TCDScheduler, {}, "tcd"),
    "Euler CFG++": (EulerCfgPp, {}, "euler-cfg-pp"),
}
rs.SAMPLERS.update(MORE)
NO_SCHEDULES = ["DDPM", "TCD"]
SIGMA = [n for n in MORE if n not in NO_SCHEDULES]


def call_sigmas(sch):
    """The sigma each UNet call is made at, plus the final one, as stipple's plan holds them."""
    if isinstance(sch, TwoCalls):
        return sch.call_sigmas.tolist()
    if isinstance(sch, (KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler, DPMSolverSDEScheduler)):
        n = len(sch.timesteps)
        out = []
        for k in range(n):
            if k % 2 == 0:
                out.append(sch.sigmas[k])
            elif isinstance(sch, KDPM2DiscreteScheduler):
                out.append(sch.sigmas_interpol[k])
            elif isinstance(sch, KDPM2AncestralDiscreteScheduler):
                out.append(sch.sigmas_interpol[k - 1])
            else:
                t, t_next = t_fn(sch.sigmas[k - 1]), t_fn(sch.sigmas[k])
                out.append(sigma_fn(t + (t_next - t) * 0.5))
        return [float(v) for v in out] + [0.0]
    if isinstance(sch, (DDPMScheduler, TCDScheduler)):
        return None
    return sch.sigmas.tolist()


def run(name, schedule, family, steps, overrides, seed):
    sch = rs.make(name, schedule, family, {**SD15, **overrides})
    g = torch.Generator("cpu").manual_seed(seed)
    if isinstance(sch, DPMSolverSDEScheduler):
        with_seeded_brownian(sch, g, SHAPE)
    sch.set_timesteps(steps)
    init = float(sch.init_noise_sigma)
    latents = torch.randn(SHAPE, generator=g, dtype=torch.float32) * sch.init_noise_sigma
    kw = rs.step_kwargs(sch, g)
    if isinstance(sch, TCDScheduler):
        kw["eta"] = TCD_GAMMA
    divisors, per_step = [], []
    for t in sch.timesteps:
        x_in = sch.scale_model_input(latents, t)
        divisors.append(f32((latents.flatten()[0] / x_in.flatten()[0]).item()))
        out = fake_model(x_in, t)
        latents = sch.step(out, t, latents, return_dict=False, **kw)[0]
        flat = latents.flatten()
        per_step.append([f32(flat[i].item()) for i in STEP_SAMPLE])
    sigmas = call_sigmas(sch)
    return {
        "sampler": name, "schedule": schedule, "family": family, "steps": steps, "overrides": overrides,
        "seed": seed, "class": type(sch).__name__,
        "timesteps": [float(t) for t in sch.timesteps.tolist()],
        "sigmas": None if sigmas is None else [f32(s) for s in sigmas],
        "init_noise_sigma": f32(init),
        "input_divisors": divisors,
        "step_samples": per_step,
        "final": [f32(v) for v in latents.flatten().tolist()[::2]],
    }


def scheduler_cases():
    closed = [n for n in MORE if n != "Euler CFG++"]  # CFG++ needs a CFG pair: images only
    cases = [(n, "automatic", "sd1", s, {}) for n in closed for s in (4, 8)]
    cases += [(n, k, "sd1", s, {}) for n in SIGMA if n in closed for k in rs.SCHEDULES for s in (4, 8)]
    cases += [(n, "automatic", "sd1", 6, {"timestep_spacing": "leading"}) for n in closed]
    cases += [(n, "automatic", "sd1", 8, {"prediction_type": "v_prediction"}) for n in closed]
    cases += [("DEIS", "automatic", "sd1", 16, {}), ("DPM++ 3M SDE", "automatic", "sd1", 16, {})]
    return cases


def write_schedulers():
    cases = [run(*c, seed=3000 + i) for i, c in enumerate(scheduler_cases())]
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__, "shape": list(SHAPE),
            "step_sample_indices": STEP_SAMPLE, "final_stride": 2, "base_config": SD15}
    OUT.write_text(json.dumps({"meta": meta, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


IMAGE_CASES = {family: rs.grid_cases(MORE) for family in ("sd1", "sdxl")}
SIZE = 32
CFG = {"Euler CFG++": 1.5}


RESUME = False


BROWNIAN_CASES = {
    "sd1": [("DPM++ SDE", "automatic", 4), ("DPM++ SDE", "karras", 8), ("DPM++ 2M SDE", "karras", 4),
            ("DPM++ 2M SDE", "karras", 8), ("DPM++ 3M SDE", "exponential", 8)],
    "sdxl": [("DPM++ 2M SDE", "karras", 4)],
}


def with_tree_noise(sch, seed, shape):
    """A1111's Brownian-tree noise for diffusers' SDE schedulers (see the module doc)."""
    if isinstance(sch, DPMSolverSDEScheduler):
        sch.noise_sampler_seed = seed
        return sch
    plain_set, plain_step, state = sch.set_timesteps, sch.step, {}

    def set_timesteps(*a, **kw):
        plain_set(*a, **kw)
        s = sch.sigmas
        state["tree"] = TreeNoise(shape, float(s[s > 0].min()), float(s.max()), seed)

    def step(model_output, timestep, sample, generator=None, variance_noise=None, return_dict=True):
        if sch.step_index is None:
            sch._init_step_index(timestep)
        sigma, sigma_next = float(sch.sigmas[sch.step_index]), float(sch.sigmas[sch.step_index + 1])
        noise = (state["tree"](sigma, sigma_next).reshape(sample.shape) if sigma_next > 0
                 else torch.zeros_like(sample))
        return plain_step(model_output, timestep, sample, variance_noise=noise, return_dict=return_dict)

    sch.set_timesteps, sch.step = set_timesteps, step
    return sch


def write_images(family, brownian=False):
    from diffusers_reference import IMAGE_NEGATIVE, IMAGE_PROMPT, IMAGE_SEED

    ref, scheduler, pipeline = rs.load_tiny(family)
    images = []
    for name, schedule, steps in (BROWNIAN_CASES if brownian else IMAGE_CASES)[family]:
        slug = rs.SAMPLERS[name][2]
        if brownian:
            file = f"image.brownian.{slug}.{steps}.png" if schedule == "automatic" else \
                f"image.brownian.{slug}.{schedule}.{steps}.png"
        else:
            file = rs.grid_file(slug, schedule, steps)
        cfg = CFG.get(name, 7.0)
        images.append({"file": file, "sampler": slug, "schedule": schedule, "steps": steps, "cfg": cfg,
                       "sde_noise": "brownian" if brownian else "step"})
        if RESUME and (ref / file).exists():
            continue
        g = torch.Generator("cpu").manual_seed(IMAGE_SEED)
        sched = rs.make(name, schedule, family, dict(scheduler.config))
        pipe = pipeline(sched)
        hook = None
        side = SIZE // pipe.vae_scale_factor
        latent_shape = (1, pipe.unet.config.in_channels, side, side)
        if brownian:
            with_tree_noise(sched, IMAGE_SEED, latent_shape)
        elif isinstance(sched, DPMSolverSDEScheduler):
            with_seeded_brownian(sched, g, latent_shape)
        if isinstance(sched, EulerCfgPp):
            def keep_uncond(module, args, output, sched=sched):
                sched.uncond = output[0][:1]
            hook = pipe.unet.register_forward_hook(keep_uncond)
        kw = {"eta": TCD_GAMMA} if isinstance(sched, TCDScheduler) else {}
        with torch.no_grad():
            img = pipe(IMAGE_PROMPT, negative_prompt=IMAGE_NEGATIVE, num_inference_steps=steps, guidance_scale=cfg,
                       generator=g, height=SIZE, width=SIZE, **kw).images[0]
        if hook is not None:
            hook.remove()
        img.save(ref / file)
    spec = {"prompt": IMAGE_PROMPT, "negative": IMAGE_NEGATIVE, "seed": IMAGE_SEED, "cfg": 7.0, "width": SIZE,
            "height": SIZE, "family": family, "images": images,
            "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "script": "scripts/reference_samplers_more.py " + ("--brownian" if brownian else "--images")}}
    out = "samplers_brownian.json" if brownian else "samplers_more.json"
    (ref / out).write_text(json.dumps(spec, indent=1) + "\n")
    print(f"wrote {len(images)} images and {out} to {ref}")


if __name__ == "__main__":
    if ARGS.schedulers:
        write_schedulers()
    RESUME = ARGS.resume
    for family in ("sd1", "sdxl") if ARGS.images else ():
        os.environ.setdefault("PYTHONHASHSEED", "0")
        write_images(family)
    for family in ("sd1", "sdxl") if ARGS.brownian else ():
        os.environ.setdefault("PYTHONHASHSEED", "0")
        write_images(family, brownian=True)
