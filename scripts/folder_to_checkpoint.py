#!/usr/bin/env python3
"""Writes an SD 1.x or SDXL stipple model folder's weights as an LDM single-file checkpoint (the layout
A1111 and ComfyUI load), for opening real-size checkpoints on the GPU machine without downloading one.

    python scripts/folder_to_checkpoint.py MODEL_DIR OUT.safetensors

The folder's weights are diffusers parameters; the names go through ldm_names (the mapping the
single-file fixtures use), so `stipple --model OUT.safetensors` must give the folder's pictures.
"""
import argparse
import json
import os
import sys


def arg_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ldm_names import cast, clip_to_ldm, ddpm_buffers, open_clip_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402


def config(folder, component):
    with open(os.path.join(folder, component, "config.json")) as f:
        return {k: v for k, v in json.load(f).items() if k not in ("_class_name", "_diffusers_version")}


def weights(folder, *components):
    state = {}
    for c in components:
        state.update(load_file(os.path.join(folder, c, "weights.safetensors")))
    return state


def text_encoder(folder, component, cls):
    from transformers import CLIPTextConfig

    te = cls(CLIPTextConfig(**config(folder, component)))
    # The folder keeps the released `text_model.` names; transformers 5 has no such level.
    own = te.state_dict().keys()
    state = weights(folder, component)
    if not any(k.startswith("text_model.") for k in own):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    r = te.load_state_dict(state, strict=False)
    assert not r.unexpected_keys and all("position_ids" in k for k in r.missing_keys), r
    return te


def main():
    a = arg_parser().parse_args()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with open(os.path.join(a.model, "model_index.json")) as f:
        family = json.load(f)["family"]
    if family not in ("sd1", "sdxl"):
        sys.exit(f"{a.model}: family {family}; only sd1 and sdxl folders are written as checkpoints")
    unet = UNet2DConditionModel.from_config(config(a.model, "unet"))
    unet.load_state_dict(weights(a.model, "unet"))
    te = text_encoder(a.model, "text_encoder", CLIPTextModel)
    vae = AutoencoderKL.from_config(config(a.model, "vae_decoder"))
    vae.load_state_dict(weights(a.model, "vae_decoder", "vae_encoder"))
    with open(os.path.join(a.model, "scheduler", "scheduler_config.json")) as f:
        sched = json.load(f)
    dtype = next(iter(weights(a.model, "unet").values())).dtype
    state = {}
    state.update(unet_to_ldm(unet))
    state.update(vae_to_ldm(vae))
    if family == "sdxl":
        # SDXL's releases carry no DDPM buffers.
        state.update(clip_to_ldm(te, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(text_encoder(a.model, "text_encoder_2", CLIPTextModelWithProjection)))
    else:
        state.update(clip_to_ldm(te, "cond_stage_model.transformer."))
        state.update(ddpm_buffers(sched))
    save_file(cast(state, dtype), a.out)
    print(f"wrote {a.out}: {len(state)} tensors, {dtype}")


if __name__ == "__main__":
    main()
