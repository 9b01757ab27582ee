#!/usr/bin/env python3
"""Writes tests/fixtures/single-file-arch/: the tiny SD 2.x and SD1 inpainting models as single-file LDM
checkpoints, each verified by diffusers' own converters, and manifest.json.

    /work/venv/bin/python scripts/arch_fixtures.py      # after export_model.py --tiny --family sd2 / sd1-inpaint

Deterministic: a rerun writes the same bytes. What it writes (the weights are the tiny fixtures'):
  tiny-sd2.safetensors          F16, no metadata; model.diffusion_model.* (linear proj_in/proj_out),
                                first_stage_model.*, cond_stage_model.model.* in OpenCLIP's layout (resblocks,
                                packed in_proj) with what real SD2 files carry beyond diffusers' 23 layers: a
                                last resblock (SD2 conditions on the penultimate layer; diffusers drops it),
                                text_projection and logit_scale (random, never read), and the DDPM buffers.
                                tiny-sd2's UNet answers A1111's one-step v-prediction test with v (its conv_out
                                bias is set so: model_folder.shift_to_v_test), as a real 768-v file does.
  tiny-sd15-inpaint.safetensors F16; tiny-sd15-inpaint (9-channel conv_in) in SD1's LDM layout.

How it verifies, failing loudly on any mismatch:
  * the rebuilt tiny models (export_model.py's recipe) equal the fixtures' weights.safetensors bit for bit;
  * each file is read back and run through diffusers' converters (convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint, convert_open_clip_checkpoint with SD2's prefix, convert_ldm_clip_checkpoint):
    they give back every tensor of the diffusers model exactly. For SD2 the converter also returns the extra
    last layer (diffusers ignores SD2's layer 23 by name, and the tiny encoder has 5 layers): those are checked
    to be exactly the unused tensors written, nothing else extra (text_projection and logit_scale it ignores).
"""
import argparse
import hashlib
import json
import os
import sys

if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_configs  # noqa: E402
from fixture_log import log  # noqa: E402
from ldm_names import cast, check_ddpm_buffers, clip_to_ldm, ddpm_buffers, open_clip_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402
from ldm_verify import all_consumed, convert_component, expect_equal, expected_state  # noqa: E402
from model_folder import ROOT, tiny_models  # noqa: E402
from single_file_fixtures import match_fixture  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIXTURES, "single-file-arch")
SD2_PREFIX = "cond_stage_model.model."
MANIFEST = {"files": {}, "rebuild": {}}


def rebuild(family, fixture):
    """The tiny model as export_model.py builds it, checked bit for bit against the fixture folder."""
    unet, (te,), vae, sched = tiny_models(family)
    for comp, m in (("unet", unet), ("text_encoder", te), ("vae_decoder", vae)):
        ok = match_fixture(os.path.join(FIXTURES, fixture), comp, m)
        assert ok, f"{fixture}/{comp}: the rebuilt weights differ from the fixture's"
        MANIFEST["rebuild"][f"{fixture}/{comp}"] = "rebuilt, bit-identical"
        log(f"rebuild {fixture}/{comp}: bit-identical to the fixture")
    return unet, te, vae, sched


class WithProjection:
    """A CLIPTextModel seen as open_clip_to_ldm expects a CLIPTextModelWithProjection: `text_model.` names
    and a text_projection (SD2 files carry one; diffusers' SD2 encoder has none)."""

    def __init__(self, te, projection):
        self.config = te.config
        self._state = dict(tiny_configs.text_encoder_state_dict(te), **{"text_projection.weight": projection})

    def state_dict(self):
        return self._state


def sd2_text_encoder(te):
    """cond_stage_model.model.*: the encoder's layers plus one more (OpenCLIP-H's 24th), text_projection
    and logit_scale, the unused ones drawn from a fixed generator."""
    g = torch.Generator().manual_seed(2024)
    width = te.config.hidden_size
    projection = torch.randn(width, width, generator=g) / width**0.5
    state = open_clip_to_ldm(WithProjection(te, projection), prefix=SD2_PREFIX)
    last = te.config.num_hidden_layers
    unused = {}
    for k, v in list(state.items()):
        if k.startswith(f"{SD2_PREFIX}transformer.resblocks.0."):
            extra = k.replace("resblocks.0.", f"resblocks.{last}.")
            unused[extra] = torch.randn(v.shape, generator=g) * 0.02
    state.update(unused)
    return state, unused, projection


def write(rel, state, **manifest):
    path = os.path.join(OUT, rel)
    os.makedirs(OUT, exist_ok=True)
    save_file(state, path, metadata={"format": "pt"})
    with open(path, "rb") as f:
        data = f.read()
    MANIFEST["files"][rel] = dict(manifest, tensors=len(state), bytes=len(data),
                                  sha256=hashlib.sha256(data).hexdigest())
    all_consumed(path, state)
    return path


def ldm_state(unet, vae, te_state, sched, dtype):
    """UNet, VAE, the text encoder's LDM state and the DDPM buffers, cast to `dtype`."""
    state = {}
    state.update(unet_to_ldm(unet))
    state.update(vae_to_ldm(vae))
    state.update(te_state)
    bufs = ddpm_buffers(sched.config)
    check_ddpm_buffers(bufs, sched)
    state.update(bufs)
    return cast(state, dtype)


def verify_unet_vae(ck, name, unet, vae, dtype):
    counts = {}
    for comp, m in (("unet", unet), ("vae", vae)):
        counts[comp] = expect_equal(f"{name} {comp}", convert_component(ck, comp, m), expected_state(comp, m, dtype))
    return counts


def write_sd2():
    unet, te, vae, sched = rebuild("sd2", "tiny-sd2")
    dtype = torch.float16
    te_state, unused, _ = sd2_text_encoder(te)
    state = ldm_state(unet, vae, te_state, sched, dtype)
    path = write("tiny-sd2.safetensors", state, what="tiny-sd2 as an SD 2.x LDM checkpoint, F16, no metadata",
                 prediction="v (A1111's one-step test; the file does not say)")
    ck = load_file(path)
    counts = verify_unet_vae(ck, "tiny-sd2", unet, vae, dtype)
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    got = convert_open_clip_checkpoint(te, ck, prefix=SD2_PREFIX)
    want = cast(tiny_configs.text_encoder_state_dict(te), dtype)
    last = te.config.num_hidden_layers
    extra = {k: got.pop(k) for k in list(got) if k.startswith(f"text_model.encoder.layers.{last}.")}
    # diffusers' SD2 ignore list names text_projection and logit_scale: they are not given back.
    assert "text_projection.weight" not in got
    counts["text_encoder"] = expect_equal("tiny-sd2 text encoder", got, want)
    # The converter's extras are exactly the unused last layer written (16 tensors after the q/k/v split).
    assert len(extra) == 16 and len(unused) == 12, (len(extra), len(unused))
    packed = unused[f"{SD2_PREFIX}transformer.resblocks.{last}.attn.in_proj_weight"].to(dtype)
    assert torch.equal(torch.cat([extra[f"text_model.encoder.layers.{last}.self_attn.{x}_proj.weight"]
                                  for x in "qkv"]), packed), "unused layer"
    for comp, c in counts.items():
        log(f"verify tiny-sd2.safetensors: {comp}: {c} tensors given back by diffusers' converter, all equal")
    MANIFEST["files"]["tiny-sd2.safetensors"]["verified"] = dict(
        counts, unused_layer_given_back_too=len(extra))


def write_inpaint():
    unet, te, vae, sched = rebuild("sd1-inpaint", "tiny-sd15-inpaint")
    dtype = torch.float16
    state = ldm_state(unet, vae, clip_to_ldm(te, "cond_stage_model.transformer."), sched, dtype)
    assert state["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 9
    path = write("tiny-sd15-inpaint.safetensors", state,
                 what="tiny-sd15-inpaint as an SD1 inpainting LDM checkpoint (9-channel conv_in), F16")
    ck = load_file(path)
    counts = verify_unet_vae(ck, "tiny-sd15-inpaint", unet, vae, dtype)
    counts["text_encoder"] = expect_equal(
        "tiny-sd15-inpaint text encoder", convert_component(ck, "text_encoder", te, label="tiny-sd15-inpaint"),
        expected_state("text_encoder", te, dtype))
    for comp, c in counts.items():
        log(f"verify tiny-sd15-inpaint.safetensors: {comp}: {c} tensors given back by diffusers' converter, all equal")
    MANIFEST["files"]["tiny-sd15-inpaint.safetensors"]["verified"] = counts


def main():
    import diffusers

    os.makedirs(OUT, exist_ok=True)
    if os.path.isdir(os.path.join(FIXTURES, "tiny-sd2")):
        write_sd2()
    if os.path.isdir(os.path.join(FIXTURES, "tiny-sd15-inpaint")):
        write_inpaint()
    MANIFEST["made_with"] = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1, sort_keys=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
