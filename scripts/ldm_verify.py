"""Checks a written LDM checkpoint through diffusers' own single-file converters: every component
comes back with exactly the tensors (names, dtypes, shapes, bits) it was written from."""
import os

import torch
from safetensors.torch import load_file

import tiny_configs
from fixture_log import log
from ldm_names import cast, position_ids_buffer


def expect_equal(label, got, want):
    """`got` (converter output) must hold exactly `want`'s tensors: same names, dtypes, shapes, bits."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"{label}: missing {missing[:5]} ({len(missing)}), extra {extra[:5]} ({len(extra)})"
    bad = [k for k in want if got[k] is None or got[k].dtype != want[k].dtype or got[k].shape != want[k].shape
           or not torch.equal(got[k], want[k])]
    assert not bad, f"{label}: {len(bad)} tensors differ, e.g. {bad[:5]}"
    return len(want)


def split_position_ids(label, conv, te, key):
    pos = conv.pop(key, None)
    assert pos is not None and torch.equal(pos, position_ids_buffer(te)), f"{label}: position_ids"


def te_expected(te, dtype, text_model_level=True):
    sd = tiny_configs.text_encoder_state_dict(te) if text_model_level else te.state_dict()
    return cast(sd, dtype)


def convert_component(ck, comp, module, text_model_level=True, extract_ema=False, label=""):
    """One component of a loaded LDM checkpoint through diffusers' own converter, for `module`'s config.

    comp: unet | vae | text_encoder (CLIP-L: SD1's cond_stage_model.transformer., SDXL's
    conditioner.embedders.0.transformer.; its position_ids buffer is checked against the module's and dropped)
    | text_encoder_2 (SDXL's OpenCLIP, conditioner.embedders.1.model.). The names are diffusers' (CLIP with
    `text_model.` when the file has that level)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    if comp == "unet":
        return convert_ldm_unet_checkpoint(ck, dict(module.config), extract_ema=extract_ema)
    if comp == "vae":
        return convert_ldm_vae_checkpoint(ck, dict(module.config))
    if comp == "text_encoder":
        # convert_ldm_clip_checkpoint takes every `cond_stage_model.transformer.` or
        # `conditioner.embedders.0.transformer.` key.
        conv = convert_ldm_clip_checkpoint(ck)
        split_position_ids(label, conv, module, ("text_model." if text_model_level else "") + "embeddings.position_ids")
        return conv
    if comp == "text_encoder_2":
        return convert_open_clip_checkpoint(module, ck, prefix="conditioner.embedders.1.model.")
    raise ValueError(comp)


def expected_state(comp, module, dtype, text_model_level=True):
    """What convert_component must give back: the module's state in `dtype` (CLIP-L under its file names)."""
    if comp == "text_encoder":
        return te_expected(module, dtype, text_model_level)
    return cast(module.state_dict(), dtype)


def verify_sd1(path, unet, te, vae, dtype, text_model_level=True, ema_expected=None):
    ck = load_file(path)
    name = os.path.basename(path)
    counts = {}
    counts["unet"] = expect_equal(f"{name} unet", convert_component(ck, "unet", unet),
                                  expected_state("unet", unet, dtype))
    if ema_expected is not None:
        counts["unet_ema"] = expect_equal(f"{name} unet ema", convert_component(ck, "unet", unet, extract_ema=True),
                                          ema_expected)
    counts["vae"] = expect_equal(f"{name} vae", convert_component(ck, "vae", vae), expected_state("vae", vae, dtype))
    counts["text_encoder"] = expect_equal(
        f"{name} text encoder", convert_component(ck, "text_encoder", te, text_model_level, label=name),
        expected_state("text_encoder", te, dtype, text_model_level))
    for comp, c in counts.items():
        log(f"verify {name}: {comp}: {c} tensors given back by diffusers' converter, all equal")
    return counts


def verify_sdxl(path, unet, te, te2, vae, dtype):
    ck = load_file(path)
    name = os.path.basename(path)
    counts = {}
    for comp, m in (("unet", unet), ("vae", vae), ("text_encoder", te), ("text_encoder_2", te2)):
        counts[comp] = expect_equal(f"{name} {comp.replace('_', ' ')}", convert_component(ck, comp, m, label=name),
                                    expected_state(comp, m, dtype))
    for comp, c in counts.items():
        log(f"verify {name}: {comp}: {c} tensors given back by diffusers' converter, all equal")
    return counts


def all_consumed(path, written):
    """The file holds exactly the tensors the writer produced, bit for bit."""
    back = load_file(path)
    assert set(back) == set(written), set(back) ^ set(written)
    for k, v in written.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
