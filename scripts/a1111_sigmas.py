#!/usr/bin/env python3
"""A1111's own sigma schedules (stable-diffusion-webui 1.10, k-diffusion sampling) for SD1.5's and
SDXL's training schedules: tests/fixtures/reference/a1111_sigmas.json.

    /work/venv/bin/python scripts/a1111_sigmas.py

How A1111 gets a sampler's sigmas (modules/sd_samplers_kdiffusion.py, `KDiffusionSampler.get_sigmas`,
and modules/sd_schedulers.py; read, not copied):
  * The model is wrapped in k-diffusion's `CompVisDenoiser` (k_diffusion/external.py), a
    `DiscreteSchedule` over the model's training sigmas ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5.
    A1111's alphas_cumprod (SD1.5: ldm's `register_schedule`; SDXL: sgm's `LegacyDDPMDiscretization`,
    kept in float32 by A1111 since 1.8) are the same for both families: betas =
    linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2 and their cumprod in float64, stored as float32.
  * sigma_min / sigma_max are the first and last training sigma (options rho, sigma_min, sigma_max
    left at 0, "use old karras scheduler sigmas" off).
  * Schedule types (A1111's label: what it computes, n = steps):
      Uniform: `DiscreteSchedule.get_sigmas(n)`: float32 t = linspace(999, 0, n), log sigma interpolated
          between the neighbouring training sigmas (`t_to_sigma`), then 0.
      Karras / Exponential / Polyexponential: k-diffusion's get_sigmas_karras (rho 7) /
          get_sigmas_exponential / get_sigmas_polyexponential (rho 1) between sigma_min and sigma_max.
      SGM Uniform: t from sigma_to_t(sigma_max) to sigma_to_t(sigma_min), linspace of n + 1 points
          with the last dropped, each through t_to_sigma (fractional, not rounded), then 0.
      Normal: the same with n points (none dropped).
      KL Optimal: tan of arctan(sigma) linear from sigma_max to sigma_min over n + 1 points (ends at
          sigma_min, no 0 appended).
      Align Your Steps: NVIDIA's 11-value table of the family; for n != 11 resampled log-linearly to n
          points (note: n, not n + 1: the last sigma is 0.029, not dropped), then 0.
      Simple: every (1000 / n)-th training sigma from the top, then 0.
      DDIM: every (1000 // n)-th training sigma from index 1 upwards, reversed, then 0.
      Beta: sigma_min + beta.ppf(1 - linspace(0, 1, n), 0.6, 0.6) * (sigma_max - sigma_min), then 0.
  * "Automatic" is the sampler's own: Karras for DPM++ 2M, DPM++ SDE, DPM++ 2S a, DPM2, DPM2 a;
    Exponential for DPM++ 2M SDE and DPM++ 3M SDE; Uniform for the others (Euler, Euler a, LMS, Heun).
  * DPM2, DPM2 a and DPM++ 3M SDE discard the next-to-last sigma (`discard_next_to_last_sigma`):
    sigmas are made for n + 1 steps and the one before the final 0 is removed, whatever the schedule type.

Zero terminal SNR ("Noise schedule for sampling: Zero Terminal SNR", modules/sd_models.py,
`rescale_zero_terminal_snr_abar` applied to the float32 alphas_cumprod before the denoiser is made):
sqrt(alphas_cumprod) shifted so the last is 0 and scaled so the first is kept, squared, the last set to
4.8973451890853435e-08; cases with "zsnr": true (SD1.5's schedule; the sampler cases with Automatic).

Each case holds the sigmas as A1111 hands them to the sampler (final 0 included, float32 values).
Needs: torch, numpy, scipy, k-diffusion 0.1.1.post1 (imported without its package __init__, which wants
torchvision, skimage, clip and more for training code this does not use).
"""
import importlib.util
import json
import math
import pathlib
import sys
import types

import numpy as np
import torch
from scipy import stats

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/reference/a1111_sigmas.json"
STEPS = [1, 2, 3, 4, 8, 10, 11, 20, 30]

AYS = {
    "sd1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
}
# A1111 1.10's sampler table: its "Automatic" schedule type and whether it discards the
# next-to-last sigma.
SAMPLERS = {
    "DPM++ 2M": ("Karras", False),
    "DPM++ SDE": ("Karras", False),
    "DPM++ 2M SDE": ("Exponential", False),
    "DPM++ 2S a": ("Karras", False),
    "DPM++ 3M SDE": ("Exponential", True),
    "Euler a": ("Uniform", False),
    "Euler": ("Uniform", False),
    "LMS": ("Uniform", False),
    "Heun": ("Uniform", False),
    "DPM2": ("Karras", True),
    "DPM2 a": ("Karras", True),
}


def k_diffusion():
    """k_diffusion.sampling and .external without the package's __init__ (see the module doc)."""
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise SystemExit("k-diffusion is not installed: /work/venv/bin/pip install --no-deps k-diffusion==0.1.1.post1"
                         " torchdiffeq")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = pkg
    from k_diffusion import external, sampling
    return sampling, external


SAMPLING, EXTERNAL = k_diffusion()


class Model:
    """What CompVisDenoiser reads from an LDM model: its alphas_cumprod."""

    def __init__(self, zsnr=False):
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.tensor(np.cumprod(1.0 - betas.numpy()), dtype=torch.float32)
        if zsnr:
            self.alphas_cumprod = zero_terminal_snr(self.alphas_cumprod)


def zero_terminal_snr(alphas_cumprod):
    """A1111's zero-terminal-SNR rescaling of alphas_cumprod (see the module doc), in float32."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root ** 2
    out[-1] = 4.8973451890853435e-08
    return out


def t_sigmas(wrap, start_sigma, end_sigma, n, drop_last):
    start = wrap.sigma_to_t(torch.tensor(start_sigma))
    end = wrap.sigma_to_t(torch.tensor(end_sigma))
    ts = torch.linspace(start, end, n + 1)[:-1] if drop_last else torch.linspace(start, end, n)
    return [wrap.t_to_sigma(t) for t in ts] + [0.0]


def schedule_sigmas(label, n, wrap, family):
    """A1111's sigmas for a schedule type (its label) at n steps."""
    lo, hi = wrap.sigmas[0].item(), wrap.sigmas[-1].item()
    if label == "Uniform":
        return wrap.get_sigmas(n)
    if label == "Karras":
        return SAMPLING.get_sigmas_karras(n=n, sigma_min=lo, sigma_max=hi, rho=7.0)
    if label == "Exponential":
        return SAMPLING.get_sigmas_exponential(n=n, sigma_min=lo, sigma_max=hi)
    if label == "Polyexponential":
        return SAMPLING.get_sigmas_polyexponential(n=n, sigma_min=lo, sigma_max=hi, rho=1.0)
    if label == "SGM Uniform":
        return torch.FloatTensor(t_sigmas(wrap, hi, lo, n, True))
    if label == "Normal":
        return torch.FloatTensor(t_sigmas(wrap, hi, lo, n, False))
    if label == "KL Optimal":
        a_min, a_max = torch.arctan(torch.tensor(lo)), torch.arctan(torch.tensor(hi))
        k = torch.arange(n + 1)
        return torch.tan(k / n * a_min + (1.0 - k / n) * a_max)
    if label == "Align Your Steps":
        table = list(AYS[family])
        if n != len(table):
            xs = np.linspace(0, 1, len(table))
            ys = np.log(table[::-1])
            table = list(np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1])
        return torch.FloatTensor(table + [0.0])
    if label == "Simple":
        stride = len(wrap.sigmas) / n
        return torch.FloatTensor([float(wrap.sigmas[-(1 + int(x * stride))]) for x in range(n)] + [0.0])
    if label == "DDIM":
        stride = max(len(wrap.sigmas) // n, 1)
        picked = [float(wrap.sigmas[x]) for x in range(1, len(wrap.sigmas), stride)]
        return torch.FloatTensor(picked[::-1] + [0.0])
    if label == "Beta":
        xs = 1 - np.linspace(0, 1, n)
        return torch.FloatTensor([lo + stats.beta.ppf(x, 0.6, 0.6) * (hi - lo) for x in xs] + [0.0])
    raise ValueError(label)


LABELS = ["Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps",
          "Simple", "Normal", "DDIM", "Beta"]


def sampler_sigmas(sampler, label, n, wrap, family):
    """The sigmas A1111 gives `sampler` with schedule type `label` ("Automatic" included)."""
    automatic, discard = SAMPLERS[sampler]
    label = automatic if label == "Automatic" else label
    sigmas = schedule_sigmas(label, n + 1 if discard else n, wrap, family)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def main():
    wrap = EXTERNAL.CompVisDenoiser(Model(), quantize=False)
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    cases = []
    for family in ("sd1", "sdxl"):
        for n in STEPS:
            for label in LABELS:
                sig = schedule_sigmas(label, n, wrap, family)
                cases.append({"family": family, "schedule": label, "steps": n, "sigmas": [f32(s) for s in sig]})
            for sampler in SAMPLERS:
                for label in ("Automatic", "Karras"):
                    sig = sampler_sigmas(sampler, label, n, wrap, family)
                    cases.append({"family": family, "sampler": sampler, "schedule": label, "steps": n,
                                  "sigmas": [f32(s) for s in sig]})
    zwrap = EXTERNAL.CompVisDenoiser(Model(zsnr=True), quantize=False)
    for n in STEPS:
        for label in LABELS:
            sig = schedule_sigmas(label, n, zwrap, "sd1")
            cases.append({"family": "sd1", "schedule": label, "steps": n, "zsnr": True,
                          "sigmas": [f32(s) for s in sig]})
        for sampler in SAMPLERS:
            sig = sampler_sigmas(sampler, "Automatic", n, zwrap, "sd1")
            cases.append({"family": "sd1", "sampler": sampler, "schedule": "Automatic", "steps": n,
                          "zsnr": True, "sigmas": [f32(s) for s in sig]})
    meta = {"torch": torch.__version__, "k_diffusion": "0.1.1.post1", "a1111": "1.10",
            "train_sigmas_ends": [f32(wrap.sigmas[0]), f32(wrap.sigmas[-1])],
            "samplers": {k: {"automatic": a, "discard_next_to_last_sigma": d} for k, (a, d) in SAMPLERS.items()},
            "script": "scripts/a1111_sigmas.py"}
    OUT.write_text(json.dumps({"meta": meta, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
