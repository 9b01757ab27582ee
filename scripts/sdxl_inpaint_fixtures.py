#!/usr/bin/env python3
"""Writes tests/fixtures/sdxl-inpaint/: a tiny SDXL 9-channel inpainting UNet (tiny-sdxl's architecture with
conv_in 4 -> 9, as diffusers/stable-diffusion-xl-1.0-inpainting-0.1) and diffusers' references for it; with
--family sd2, tests/fixtures/sd2-inpaint/ the same way for SD 2.x (tiny-sd2's architecture, as
stabilityai/stable-diffusion-2-inpainting: epsilon-prediction, unlike tiny-sd2's v, so the fixture has its
own scheduler/scheduler_config.json; StableDiffusionInpaintPipeline).

    /work/venv/bin/python scripts/sdxl_inpaint_fixtures.py   # after export_model.py --tiny --family sdxl
                                                              # and single_file_fixtures.py; ~2 min
    /work/venv/bin/python scripts/sdxl_inpaint_fixtures.py --family sd2   # after export_model.py --tiny
                                                              # --family sd2 and arch_fixtures.py; ~1 min

For SD2 read tiny-sd2 for tiny-sdxl, single-file-arch/tiny-sd2.safetensors for the SDXL checkpoint and
StableDiffusionInpaintPipeline for the SDXL one below.

Only the UNet is new: the text encoders and the VAE are tiny-sdxl's (rebuilt here and checked bit for bit
against tests/fixtures/tiny-sdxl), so the fixture keeps just the UNet, twice, and the tests put the whole
model together (tests/it/sdxl_inpaint.rs):
  unet/                       the stipple folder component (model.onnx, weightmap.json, config.json with
                              in_channels 9, weights.safetensors F16): tiny-sdxl/ with this unet/ is the folder
  unet.ldm.safetensors        the same UNet in SDXL's LDM naming (`model.diffusion_model.*`, F16): the
                              single-file checkpoint is tests/fixtures/single-file/tiny-sdxl.safetensors with
                              its `model.diffusion_model.*` tensors replaced by these (the same key set, checked)
  reference/img2img.json      StableDiffusionXLInpaintPipeline on the 9-channel UNet (mask and masked-image
                              latents concatenated to the UNet input, no blending): euler at denoise 0.5, 0.75
                              and 1, euler-a and ddim at 0.75 and 1, and no mask (all-white, A1111's reading)
  reference/only_masked.json  the same pipeline with padding_mask_crop ("only masked")
  manifest.json               what was verified: the rebuilt tiny-sdxl parts, diffusers' converter on the LDM
                              UNet (every tensor given back exactly), the key set of the merge, sha256s

Deterministic: a rerun writes the same bytes (the PNGs with the same torch and diffusers).
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _parser.add_argument("--family", choices=["sdxl", "sd2"], default="sdxl")
    ARGS = _parser.parse_args()

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_configs  # noqa: E402
from diffusers_reference import round_to_fp16_  # noqa: E402
from fixture_log import VERIFY_LOG, log  # noqa: E402
from img2img_reference import FIXTURES, scheduler_for  # noqa: E402
from ldm_names import cast, unet_to_ldm  # noqa: E402
from ldm_verify import convert_component, expect_equal, expected_state  # noqa: E402
from model_folder import tiny_models  # noqa: E402
from onnx_export import export_unet  # noqa: E402
from single_file_fixtures import match_fixture  # noqa: E402

FAMILY = ARGS.family if __name__ == "__main__" else "sdxl"
# Per family: the fixture written, the tiny model it extends, the single file whose UNet it replaces, the
# tiny UNet config, the seed of the new UNet and the prediction type of the references.
FAMILIES = {
    "sdxl": ("sdxl-inpaint", "tiny-sdxl", os.path.join("single-file", "tiny-sdxl.safetensors"),
             tiny_configs.SDXL_UNET, tiny_configs.SEED + 40, None),
    # SD 2.x inpainting (stable-diffusion-2-inpainting, A1111's v2-inpainting-inference.yaml) is epsilon.
    "sd2": ("sd2-inpaint", "tiny-sd2", os.path.join("single-file-arch", "tiny-sd2.safetensors"),
            tiny_configs.SD2_TINY_UNET, tiny_configs.SEED + 50, "epsilon"),
}
_out, _tiny, _ckpt, _unet_config, UNET_SEED, PREDICTION = FAMILIES[FAMILY]
OUT = os.path.join(FIXTURES, _out)
TINY_SDXL = os.path.join(FIXTURES, _tiny)
CHECKPOINT = os.path.join(FIXTURES, _ckpt)
# The tiny UNet with a 9-channel conv_in (latents, mask, masked-image latents).
INPAINT_UNET = dict(_unet_config, in_channels=9)
CASES = [("euler", 0.5), ("euler", 0.75), ("euler", 1.0), ("euler-a", 0.75), ("euler-a", 1.0), ("ddim", 0.75),
         ("ddim", 1.0)]
ONLY_MASKED = [("euler-a", 0.75, 8, (64, 64))]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build():
    """tiny-sdxl's encoders, VAE and scheduler (checked against the fixture) and the 9-channel UNet."""
    from diffusers import UNet2DConditionModel

    _, encoders, vae, sched = tiny_models(FAMILY)
    te, te2 = (encoders + [None])[:2]
    comps = [("text_encoder", te), ("text_encoder_2", te2), ("vae_decoder", vae), ("vae_encoder", vae)]
    for comp, m in comps:
        if m is None:
            continue
        assert match_fixture(TINY_SDXL, comp, m), f"{_tiny}/{comp}: the rebuilt weights differ"
        log(f"rebuild {_tiny}/{comp}: bit-identical to the fixture")
    if PREDICTION is not None:
        sched = type(sched).from_config(sched.config, prediction_type=PREDICTION)
    unet = tiny_configs.randomize_(UNet2DConditionModel(**INPAINT_UNET), UNET_SEED).eval()
    round_to_fp16_(unet)
    assert unet.conv_in.weight.shape[1] == 9
    return unet, te, te2, vae, sched


def write_unet(unet):
    """unet/ as export_model.py writes a component (fp32 graph, F16 weights) and unet.ldm.safetensors."""
    export_unet(unet, OUT, torch.float32, torch.float16)
    for f in os.listdir(os.path.join(OUT, "unet")):
        if f.endswith(".cuda.onnx") or f.endswith(".cuda.json"):
            os.remove(os.path.join(OUT, "unet", f))
    assert match_fixture(OUT, "unet", unet)
    state = cast(unet_to_ldm(unet), torch.float16)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert state[key].shape[1] == 9, state[key].shape
    path = os.path.join(OUT, "unet.ldm.safetensors")
    save_file(state, path, metadata={"format": "pt"})
    back = load_file(path)
    n = expect_equal("unet.ldm.safetensors", convert_component(back, "unet", unet),
                     expected_state("unet", unet, torch.float16))
    log(f"verify unet.ldm.safetensors: {n} tensors given back by diffusers' converter, all equal")
    # The single file the tests make: tiny-sdxl.safetensors with these UNet tensors instead of its own.
    base = load_file(CHECKPOINT)
    base_unet = {k for k in base if k.startswith("model.diffusion_model.")}
    assert base_unet == set(state), sorted(base_unet ^ set(state))[:5]
    merged = {k: v for k, v in base.items() if k not in base_unet}
    merged.update(state)
    n = expect_equal("merged checkpoint unet", convert_component(merged, "unet", unet),
                     expected_state("unet", unet, torch.float16))
    log(f"verify merge: {os.path.basename(CHECKPOINT)}'s {len(base_unet)} UNet keys are exactly the 9-channel UNet's; "
        f"the merged file's UNet converts back exactly ({n} tensors)")
    return {"tensors": len(state), "converter_tensors_equal": n, "sha256": sha256(path),
            "base_checkpoint_sha256": sha256(CHECKPOINT)}


def references(unet, te, te2, vae, sched):
    import diffusers
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
    from transformers import CLIPTokenizer

    pics = os.path.join(FIXTURES, "img2img")  # written by img2img_reference.py; read, not rewritten
    init = Image.open(os.path.join(pics, "init.png")).convert("RGB")
    mask = Image.open(os.path.join(pics, "mask.png")).convert("L")
    ref = os.path.join(OUT, "reference")
    os.makedirs(ref, exist_ok=True)
    tok1 = CLIPTokenizer.from_pretrained(os.path.join(TINY_SDXL, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(TINY_SDXL, "tokenizer_2")) if te2 is not None else None

    def make(slug):
        if te2 is None:
            p = StableDiffusionInpaintPipeline(vae=vae, text_encoder=te, tokenizer=tok1, unet=unet,
                                               scheduler=scheduler_for(sched, slug), safety_checker=None,
                                               feature_extractor=None, requires_safety_checker=False)
            p.set_progress_bar_config(disable=True)
            return p
        p = StableDiffusionXLInpaintPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok1,
                                             tokenizer_2=tok2, unet=unet, scheduler=scheduler_for(sched, slug),
                                             add_watermarker=False)
        p.set_progress_bar_config(disable=True)
        return p

    import img2img_reference as ir

    meta = {"prompt": ir.ref.IMAGE_PROMPT, "negative": ir.ref.IMAGE_NEGATIVE, "seed": ir.ref.IMAGE_SEED,
            "cfg": 7.0, "steps": ir.STEPS, "width": 64, "height": 64, "init": "init.png",
            "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__}}
    images = [dict(c, mask="mask.png") for c in
              ir.write(OUT, CASES, make, "inpaint", image=init, mask_image=mask, height=64, width=64)]
    white = Image.new("L", (64, 64), 255)
    images += [dict(c, mask=None) for c in
               ir.write(OUT, [("euler-a", 0.75)], make, "nomask", image=init, mask_image=white, height=64,
                        width=64)]
    with open(os.path.join(ref, "img2img.json"), "w") as f:
        json.dump(dict(meta, images=images), f, indent=1)
    ir.only_masked_references(OUT, make, ONLY_MASKED, init, meta)
    log(f"references: {len(images)} inpainting images, {len(ONLY_MASKED)} only-masked")
    return meta["made_with"]


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    unet, te, te2, vae, sched = build()
    ldm = write_unet(unet)
    made_with = references(unet, te, te2, vae, sched)
    if PREDICTION is not None:
        # The tiny model's config with the prediction changed, its `_use_default_values` kept: it says
        # which keys another scheduler class (Euler) replaces with its own default, as the references'
        # from_config did (save_config would write them all as set).
        with open(os.path.join(TINY_SDXL, "scheduler", "scheduler_config.json")) as f:
            config = json.load(f)
        config["prediction_type"] = PREDICTION
        os.makedirs(os.path.join(OUT, "scheduler"))
        with open(os.path.join(OUT, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump(config, f, indent=1)
    manifest = {"prediction_type": sched.config.prediction_type, "unet.ldm.safetensors": ldm, "unet_config": INPAINT_UNET, "unet_seed": UNET_SEED,
                "made_with": made_with, "log": VERIFY_LOG}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True, default=list)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
