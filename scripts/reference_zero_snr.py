#!/usr/bin/env python3
"""Reference runs of zero terminal SNR (diffusers' `rescale_betas_zero_snr=True`, Lin et al. 2023,
arXiv:2305.08891) for every sampler whose diffusers class takes the flag.

    reference_zero_snr.py --schedulers   # tests/fixtures/reference/zero_snr.json (closed-form model)
    reference_zero_snr.py --images       # tests/fixtures/tiny-sd2/reference/zero_snr.json + zsnr.*.png

Classes with the flag in diffusers 0.42.1 (stipple's samplers on them): EulerDiscreteScheduler (Euler),
EulerAncestralDiscreteScheduler (Euler a), DDIMScheduler (DDIM), DPMSolverMultistepScheduler (DPM++ 2M,
2M Karras, 2M SDE, 3M SDE), UniPCMultistepScheduler (UniPC), DDPMScheduler (DDPM), LCMScheduler (LCM),
TCDScheduler (TCD). All rescale the betas with `rescale_zero_terminal_snr`; the sigma-based ones (Euler,
Euler a, DPM-Solver, UniPC) then set the last alphas_cumprod to 2**-24 so the largest sigma (~4096) is
finite. Heun, LMS, KDPM2 (DPM2, DPM2 a), DPMSolverSDE (DPM++ SDE), DEIS have no such flag, nor have the
k-diffusion / ComfyUI samplers stipple re-implements (DPM++ 2S a, Euler CFG++): stipple refuses them.

--schedulers runs each class as reference_samplers(_more).py do (same closed-form fake model, same recorded
fields, their `run`) with SD1.5's config plus rescale_betas_zero_snr=True and
prediction_type="v_prediction": with trailing spacing (the paper's pairing) at 4, 8 and 20 steps, with
each class's default spacing at 6 steps (Euler, Euler a, DDIM, DPM++ 2M, DDPM, LCM), and Euler / DPM++ 2M under every schedule type at 8 steps.

--images rebuilds tiny SD2 (v-prediction) exactly as `export_model.py --tiny --family sd2` does (its UNet
weights checked bit for bit against the fixture) and writes diffusers pipeline images, 32x32, the reference
prompt, seed and CFG of diffusers_reference.py, with the class made from tiny SD2's scheduler config plus
rescale_betas_zero_snr=True and timestep_spacing="trailing": Euler, Euler a, DDIM, DPM++ 2M, DPM++ 2M SDE
(diffusers' per-step noise, stipple's `--sde-noise step`) and UniPC at 4 and 8 steps (`zsnr.<slug>.<steps>.png`).

Needs: torch, diffusers, scipy, torchsde (the /work/venv ones).
Run: /work/venv/bin/python scripts/reference_zero_snr.py --schedulers --images
"""
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sampler_args import parse_sampler_args, sampler_arg_parser  # noqa: E402

if __name__ == "__main__":
    ARGS = parse_sampler_args(sampler_arg_parser(
        __doc__, "write tests/fixtures/reference/zero_snr.json", "write tiny SD2's zero-SNR images"))

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import reference_samplers as rs  # noqa: E402
import reference_samplers_more as rsm  # noqa: E402  (adds its samplers to rs.SAMPLERS)
from reference_schedulers import SD15, SHAPE, STEP_SAMPLE  # noqa: E402

torch.set_num_threads(1)
ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/reference/zero_snr.json"

SUPPORTED = ["Euler", "Euler a", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 3M SDE",
             "UniPC", "DDPM", "LCM", "TCD"]
ZSNR = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}
TRAILING = {**ZSNR, "timestep_spacing": "trailing"}


def scheduler_cases():
    cases = [(n, "automatic", "sd1", s, TRAILING) for n in SUPPORTED for s in (4, 8)]
    cases += [(n, "automatic", "sd1", 20, TRAILING) for n in ("Euler", "DDIM", "DPM++ 2M")]
    cases += [(n, "automatic", "sd1", 6, ZSNR) for n in ("Euler", "Euler a", "DDIM", "DPM++ 2M", "DDPM", "LCM")]
    # Not DPM++ 2M with beta: diffusers' DPMSolverMultistepScheduler then spaces two timesteps alike and
    # its step index runs past the end of its sigmas (IndexError in diffusers 0.42.1).
    cases += [(n, k, "sd1", 8, ZSNR) for n in ("Euler", "DPM++ 2M") for k in rs.SCHEDULES
              if (n, k) != ("DPM++ 2M", "beta")]
    return cases


def write_schedulers():
    # reference_samplers_more.py's run knows TCD's eta; reference_samplers.py's the classes without sigmas.
    cases = [(rsm.run if c[0] in rsm.MORE else rs.run)(*c, seed=4000 + i) for i, c in enumerate(scheduler_cases())]
    for c in cases:  # every 8th final value (the runs keep every 2nd): the file stays small
        c["final"] = c["final"][::4]
    # diffusers' own check of the rescaling: the last training alphas_cumprod is 0 before the clamp.
    ac = diffusers.DDIMScheduler.from_config({**SD15, **ZSNR}).alphas_cumprod
    assert float(ac[-1]) == 0.0, float(ac[-1])
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__, "shape": list(SHAPE),
            "step_sample_indices": STEP_SAMPLE, "final_stride": 8, "base_config": SD15,
            "alphas_cumprod_ends": [float(ac[0]), float(ac[1]), float(ac[998]), float(ac[999])]}
    OUT.write_text(json.dumps({"meta": meta, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


IMAGES = ["Euler", "Euler a", "DDIM", "DPM++ 2M", "DPM++ 2M SDE", "UniPC"]
STEPS = (4, 8)
SIZE = 32
OVERRIDES = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


def load_tiny_sd2():
    """Tiny SD2 rebuilt and checked against the fixture: (reference folder, scheduler, pipeline maker)."""
    from PIL import Image

    import model_folder
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from diffusers_reference import reference_image
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    fixture = ROOT / "tests/fixtures/tiny-sd2"
    unet, encoders, vae, scheduler = model_folder.tiny_models("sd2")
    tok = CLIPTokenizer.from_pretrained(fixture / "tokenizer")

    def pipeline(sched):
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoders[0], tokenizer=tok, unet=unet,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    stored = load_file(fixture / "unet" / "weights.safetensors")
    rebuilt = unet.state_dict()
    if set(stored) != set(rebuilt) or any(not torch.equal(v.float(), rebuilt[k].float()) for k, v in stored.items()):
        raise SystemExit(f"{fixture}: the rebuilt tiny UNet differs from unet/weights.safetensors")
    check = np.asarray(reference_image(pipeline(EulerDiscreteScheduler.from_config(scheduler.config)), 4))
    want = np.asarray(Image.open(fixture / "reference/image.euler.4.png").convert("RGB"))
    diff = np.abs(check.astype(int) - want.astype(int))
    if diff.mean() > 0.01 or diff.max() > 1:
        raise SystemExit(f"{fixture}: the rebuilt tiny model does not reproduce image.euler.4.png ({diff.mean()})")
    if scheduler.config.prediction_type != "v_prediction":
        raise SystemExit(f"{fixture}: not a v-prediction model")
    return fixture / "reference", scheduler, pipeline


def write_images():
    from diffusers_reference import IMAGE_NEGATIVE, IMAGE_PROMPT, IMAGE_SEED, reference_image

    ref, scheduler, pipeline = load_tiny_sd2()
    config = {**dict(scheduler.config), **OVERRIDES}
    # from_config drops the keys listed as the writer's defaults: the spacing set here must stay.
    config["_use_default_values"] = [k for k in config.get("_use_default_values", []) if k not in OVERRIDES]
    images = []
    for name in IMAGES:
        cls, extra, slug = rs.SAMPLERS[name]
        for steps in STEPS:
            file = f"zsnr.{slug}.{steps}.png"
            images.append({"file": file, "sampler": slug, "schedule": "automatic", "steps": steps})
            sched = cls.from_config({**config, **extra})
            assert sched.config.rescale_betas_zero_snr and sched.config.timestep_spacing == "trailing"
            reference_image(pipeline(sched), steps, height=SIZE, width=SIZE).save(ref / file)
    spec = {"prompt": IMAGE_PROMPT, "negative": IMAGE_NEGATIVE, "seed": IMAGE_SEED, "cfg": 7.0,
            "width": SIZE, "height": SIZE, "family": "sd2",
            "scheduler_overrides": OVERRIDES,
            "images": images,
            "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "script": "scripts/reference_zero_snr.py --images"}}
    (ref / "zero_snr.json").write_text(json.dumps(spec, indent=1) + "\n")
    print(f"wrote {len(images)} images and zero_snr.json to {ref}")


if __name__ == "__main__":
    if ARGS.schedulers:
        write_schedulers()
    if ARGS.images:
        os.environ.setdefault("PYTHONHASHSEED", "0")
        write_images()
