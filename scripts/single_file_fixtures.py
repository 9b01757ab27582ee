#!/usr/bin/env python3
"""Writes tests/fixtures/single-file/: the tiny models as single-file LDM checkpoints (A1111/Civitai
`.safetensors`), as a diffusers Hugging Face folder, a standalone VAE, bad inputs, references, manifest.json.

    /work/venv/bin/python scripts/single_file_fixtures.py        # about 1.5 minutes on 2 CPU cores

Deterministic: a rerun writes the same bytes. The output folder is deleted and rewritten.

What it writes (the weights are the tiny fixtures', tests/fixtures/tiny-sd15 and tiny-sdxl):
  tiny-sd15.safetensors               F16; model.diffusion_model.*, first_stage_model.* (full VAE),
                                      cond_stage_model.transformer.text_model.* (+ embeddings.position_ids),
                                      and the DDPM buffers (betas, alphas_cumprod, ...) of LDM's register_schedule
  tiny-sd15-oldclip-f32.safetensors   F32, the same values; the old CLIP layout without `text_model.`
  tiny-sd15-bf16-ema.safetensors      BF16 + model_ema.decay, model_ema.num_updates and model_ema.<flattened
                                      diffusion_model key>, whose values are the UNet's × EMA_SCALE
  tiny-sdxl.safetensors               F16; conditioner.embedders.0.transformer.text_model.* (CLIP-L),
                                      conditioner.embedders.1.model.* (OpenCLIP-G layout: resblocks, fused
                                      in_proj, text_projection = diffusers' weight transposed, logit_scale)
  tiny-vae.safetensors                F16 standalone VAE in LDM naming without a prefix (as vae-ft-mse-840000),
                                      decoder conv weights × VAE_SCALE so a test can tell it was used
  tiny-sd15-diffusers/                StableDiffusionPipeline.save_pretrained(variant="fp16") of tiny-sd15: every
                                      component as *.fp16.safetensors; transformers 5 writes the text encoder
                                      without the `text_model.` level and the tokenizer as tokenizer.json only
  reference/                          diffusers images (euler, 4 steps, the settings of tiny-sd15's
                                      reference/images.json) from the bf16 file (its UNet; its EMA UNet),
                                      from tiny-sd15 with tiny-vae swapped in, from tiny-sd15-diffusers/ as
                                      from_pretrained(variant="fp16", torch_dtype=float32) loads it, and from
                                      tiny-sd15 with diffusers' clip_skip=1 (A1111's "Clip skip: 2"; also
                                      clip_skip.safetensors: encode_prompt's embeddings); images.json describes them
  bad/                                refiner, SD3, Flux, truncated, header past the end, an F8 tensor,
                                      a pickle .ckpt (never to be unpickled), no UNet; f8 and no_unet carry
                                      tiny-sd15's key names with 1-element placeholders (the F8 tensor has its
                                      real shape) so they stay small
  manifest.json                       per file: what it is, dtype, key layout, verification counts

The LDM names are computed from the diffusers configs (down/up block count, layers_per_block, which blocks
have attention, transformer depth), not from diffusers' convert_diffusers_to_original_* scripts, which
hard-code SD's four levels. How it verifies, failing loudly on any mismatch:
  * the rebuilt tiny models (export_model.py's recipe) equal the fixtures' weights.safetensors bit for bit;
  * every written file is read back and run through diffusers' own config-driven converters
    (diffusers.loaders.single_file_utils: convert_ldm_unet_checkpoint, incl. extract_ema=True,
    convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint): they must give
    back every tensor of the diffusers model, exactly (the VAE attention as linear [c, c]), nothing missing
    or extra (the only extra is CLIP's position_ids buffer, which transformers 5 no longer saves; it is
    checked against the model's buffer);
  * the diffusers folder is loaded back with StableDiffusionPipeline.from_pretrained(variant="fp16");
  * the image path: tiny-sd15.safetensors through the converters renders exactly as the rebuilt models, and
    within 1/255 of tiny-sd15/reference/image.euler.4.png (made on another machine);
  * the config-driven UNet names agree with scripts/lora_ldm.py's (derived from the names instead).
  * `from_single_file` is also tried (the file plus config=<a diffusers folder>) and recorded in
    manifest.json["from_single_file"]; the converters above are the verification that counts. With diffusers
    0.42.1 it loads tiny-sd15.safetensors (pipeline and UNet) and tiny-vae.safetensors with every tensor equal;
    for tiny-sdxl.safetensors it loads UNet, VAE and text_encoder exactly but fills text_encoder_2 from CLIP-L
    and leaves its text_projection.weight on the meta device: it tells the SDXL encoders apart by hidden width,
    and both tiny encoders are 32 wide (real ones: 768 and 1280). Not a fault of the file.
"""

import argparse
import copy
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile


def arg_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()  # --help and argument errors come before the heavy imports below

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_configs  # noqa: E402
from diffusers_reference import (  # noqa: E402
    IMAGE_NEGATIVE,
    IMAGE_PROMPT,
    IMAGE_SEED,
    SCHEDULERS,
    reference_image,
    round_to_fp16_,
)
from fixture_log import VERIFY_LOG, log  # noqa: E402
from ldm_names import (  # noqa: E402
    LOGIT_SCALE,
    cast,
    check_ddpm_buffers,
    clip_to_ldm,
    ddpm_buffers,
    ema_key,
    open_clip_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from ldm_verify import all_consumed, expect_equal, verify_sd1, verify_sdxl  # noqa: E402
from model_folder import ROOT  # noqa: E402
from onnx_export import component_params  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIXTURES, "single-file")
SD15_DIR = os.path.join(FIXTURES, "tiny-sd15")
SDXL_DIR = os.path.join(FIXTURES, "tiny-sdxl")
EMA_SCALE = 1.1
VAE_SCALE = 1.05
EMA_DECAY = 0.9999
EMA_UPDATES = 1234
REF_SAMPLER, REF_STEPS = "euler", 4
CLIP_SKIP = 1  # diffusers' clip_skip=1: one layer skipped, A1111's "Clip skip: 2"
MANIFEST = {"files": {}, "from_single_file": {}, "rebuild": {}}


# ---------------------------------------------------------------------------------------------
# The tiny models, rebuilt as export_model.py's tiny() / tiny_sdxl() build them


def match_fixture(fixture_dir, component, module):
    """True when every parameter export_model stores for `component` equals the fixture's F16 bits.

    When not, loads the fixture's values into `module` (the rest, e.g. the VAE encoder, stays as
    randomize_ made it, which is deterministic) and returns False."""
    want = load_file(os.path.join(fixture_dir, component, "weights.safetensors"))
    params = component_params(component, module)
    assert set(params) == set(want), (component, set(params) ^ set(want))
    same = all(
        want[k].dtype == torch.float16 and p.shape == want[k].shape
        and torch.equal(p.detach().half().view(torch.int16), want[k].view(torch.int16))
        and torch.equal(p.detach(), want[k].float())
        for k, p in params.items()
    )
    if not same:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(want[k].float())
    return same


def rebuild_sd15():
    torch.manual_seed(0)
    unet, te, vae, sched = tiny_configs.build_sd15()
    for m in (unet, te, vae):
        round_to_fp16_(m)
    for comp, m in (("unet", unet), ("text_encoder", te), ("vae_decoder", vae)):
        ok = match_fixture(SD15_DIR, comp, m)
        MANIFEST["rebuild"][f"tiny-sd15/{comp}"] = "rebuilt, bit-identical" if ok else "loaded from fixture"
        log(f"rebuild tiny-sd15/{comp}: {'bit-identical to the fixture' if ok else 'MISMATCH: fixture weights loaded'}")
    return unet, te, vae, sched


def rebuild_sdxl():
    torch.manual_seed(0)
    unet, te, te2, vae, sched = tiny_configs.build_sdxl()
    for m in (unet, te, te2, vae):
        round_to_fp16_(m)
    for comp, m in (("unet", unet), ("text_encoder", te), ("text_encoder_2", te2), ("vae_decoder", vae)):
        ok = match_fixture(SDXL_DIR, comp, m)
        MANIFEST["rebuild"][f"tiny-sdxl/{comp}"] = "rebuilt, bit-identical" if ok else "loaded from fixture"
        log(f"rebuild tiny-sdxl/{comp}: {'bit-identical to the fixture' if ok else 'MISMATCH: fixture weights loaded'}")
    return unet, te, te2, vae, sched


# ---------------------------------------------------------------------------------------------
# Writing


def file_info(path):
    with open(path, "rb") as f:
        data = f.read()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


ST_DTYPE = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64",
            torch.int32: "I32", torch.float8_e4m3fn: "F8_E4M3"}


def write_safetensors(rel, state, **manifest):
    path = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(state, path, metadata={"format": "pt"})
    info = file_info(path)
    dtypes = {}
    for v in state.values():
        dtypes[ST_DTYPE[v.dtype]] = dtypes.get(ST_DTYPE[v.dtype], 0) + 1
    MANIFEST["files"][rel] = dict(manifest, tensors=len(state), tensor_dtypes=dtypes, **info)
    return path


def sd1_checkpoint(unet, te, vae, sched, dtype, text_model_level=True):
    state = {}
    state.update(unet_to_ldm(unet))
    state.update(vae_to_ldm(vae))
    state.update(clip_to_ldm(te, "cond_stage_model.transformer.", text_model_level))
    bufs = ddpm_buffers(sched.config)
    check_ddpm_buffers(bufs, sched)
    state.update(bufs)
    return cast(state, dtype)


SD1_LAYOUT = {
    "unet": "model.diffusion_model.{input_blocks,middle_block,output_blocks,time_embed,out}",
    "vae": "first_stage_model.{encoder,decoder,quant_conv,post_quant_conv} (attention q/k/v/proj_out [c,c,1,1])",
    "ddpm_buffers": "betas, alphas_cumprod, ... (12 x [1000], LDM register_schedule)",
}


def write_sd15_files(unet, te, vae, sched):
    counts = {}
    rel = "tiny-sd15.safetensors"
    state = sd1_checkpoint(unet, te, vae, sched, torch.float16)
    path = write_safetensors(rel, state, what="tiny-sd15 as an SD1 single-file checkpoint", dtype="F16",
                             layout=dict(SD1_LAYOUT, text_encoder="cond_stage_model.transformer.text_model.* "
                                         "(+ embeddings.position_ids, I64)"))
    all_consumed(path, state)
    counts[rel] = verify_sd1(path, unet, te, vae, torch.float16)

    rel = "tiny-sd15-oldclip-f32.safetensors"
    state = sd1_checkpoint(unet, te, vae, sched, torch.float32, text_model_level=False)
    path = write_safetensors(rel, state, what="tiny-sd15, F32 (the same fp16-rounded values), old CLIP layout",
                             dtype="F32",
                             layout=dict(SD1_LAYOUT, text_encoder="cond_stage_model.transformer.{embeddings,encoder,"
                                         "final_layer_norm}.* (no text_model.; + embeddings.position_ids, I64)"))
    all_consumed(path, state)
    counts[rel] = verify_sd1(path, unet, te, vae, torch.float32, text_model_level=False)

    rel = "tiny-sd15-bf16-ema.safetensors"
    state = sd1_checkpoint(unet, te, vae, sched, torch.bfloat16)
    ldm_unet = unet_to_ldm(unet)
    for k, v in ldm_unet.items():
        state[ema_key(k)] = (v * EMA_SCALE).to(torch.bfloat16).contiguous()
    state["model_ema.decay"] = torch.tensor(EMA_DECAY, dtype=torch.float32)
    state["model_ema.num_updates"] = torch.tensor(EMA_UPDATES, dtype=torch.int32)
    ema_want = {k: (v * EMA_SCALE).to(torch.bfloat16) for k, v in unet.state_dict().items()}
    path = write_safetensors(rel, state, what=f"tiny-sd15, BF16, with EMA weights (UNet x {EMA_SCALE})",
                             dtype="BF16",
                             layout=dict(SD1_LAYOUT, text_encoder="cond_stage_model.transformer.text_model.*",
                                         ema="model_ema.<diffusion_model key, dots removed after 'model.'> "
                                             f"(BF16, UNet x {EMA_SCALE}); model_ema.decay (F32 scalar "
                                             f"{EMA_DECAY}), model_ema.num_updates (I32 scalar {EMA_UPDATES})"))
    all_consumed(path, state)
    counts[rel] = verify_sd1(path, unet, te, vae, torch.bfloat16, ema_expected=ema_want)
    return counts


def sdxl_checkpoint(unet, te, te2, vae, dtype):
    """An SDXL single-file state (no DDPM buffers, as SDXL's releases) from any diffusers SDXL models."""
    state = {}
    state.update(unet_to_ldm(unet))
    state.update(vae_to_ldm(vae))
    state.update(clip_to_ldm(te, "conditioner.embedders.0.transformer."))
    state.update(open_clip_to_ldm(te2))
    return cast(state, dtype)


def write_sdxl_file(unet, te, te2, vae):
    rel = "tiny-sdxl.safetensors"
    state = sdxl_checkpoint(unet, te, te2, vae, torch.float16)
    path = write_safetensors(
        rel, state, what="tiny-sdxl as an SDXL single-file checkpoint", dtype="F16",
        layout={"unet": "model.diffusion_model.* (label_emb.0.0/0.2 = add_embedding)",
                "vae": "first_stage_model.*",
                "text_encoder": "conditioner.embedders.0.transformer.text_model.* (+ embeddings.position_ids, I64)",
                "text_encoder_2": "conditioner.embedders.1.model.{token_embedding.weight, positional_embedding, "
                                  "transformer.resblocks.i.{ln_1,ln_2,attn.in_proj_weight/bias (q;k;v rows),"
                                  "attn.out_proj,mlp.c_fc,mlp.c_proj}, ln_final, text_projection "
                                  "([hidden, proj] = diffusers' text_projection.weight transposed), logit_scale "
                                  f"(F16 scalar {LOGIT_SCALE})}}"})
    all_consumed(path, state)
    return {rel: verify_sdxl(path, unet, te, te2, vae, torch.float16)}


def perturbed_vae(vae):
    v = copy.deepcopy(vae)
    with torch.no_grad():
        for k, p in v.named_parameters():
            if k.startswith("decoder.") and k.endswith(".weight") and p.dim() == 4:
                p.mul_(VAE_SCALE)
        round_to_fp16_(v)
    return v.eval()


def write_vae_file(vae):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    rel = "tiny-vae.safetensors"
    pvae = perturbed_vae(vae)
    state = cast(vae_to_ldm(pvae, prefix=""), torch.float16)
    path = write_safetensors(rel, state, what=f"standalone VAE (tiny-sd15's, decoder conv weights x {VAE_SCALE}, "
                                              "fp16-rounded)", dtype="F16",
                             layout={"vae": "encoder.*, decoder.*, quant_conv, post_quant_conv (no prefix, as "
                                            "vae-ft-mse-840000-ema-pruned.safetensors)"})
    all_consumed(path, state)
    n = expect_equal(rel, convert_ldm_vae_checkpoint(load_file(path), dict(pvae.config)),
                     cast(pvae.state_dict(), torch.float16))
    log(f"verify {rel}: vae: {n} tensors given back by diffusers' converter, all equal")
    return pvae, {rel: {"vae": n}}


# ---------------------------------------------------------------------------------------------
# The diffusers folder


def sd15_pipeline(unet, te, vae, sched_name=None, base_sched=None):
    import diffusers
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    if sched_name is None:
        sched = base_sched
    else:
        # Exactly write_references' handling: the scheduler class from SCHEDULERS, from the model's config.
        cls_name, extra = SCHEDULERS[sched_name]
        sched = getattr(diffusers, cls_name).from_config(base_sched.config, **extra)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=CLIPTokenizer.from_pretrained(
        os.path.join(SD15_DIR, "tokenizer")), unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_diffusers_folder(unet, te, vae, sched):
    from diffusers import StableDiffusionPipeline

    rel = "tiny-sd15-diffusers"
    dest = os.path.join(OUT, rel)
    pipe = sd15_pipeline(*(copy.deepcopy(m).half() for m in (unet, te, vae)), base_sched=sched)
    pipe.save_pretrained(dest, safe_serialization=True, variant="fp16")
    files = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs)

    back = StableDiffusionPipeline.from_pretrained(dest, variant="fp16", torch_dtype=torch.float16,
                                                   local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    counts = {}
    for comp, mod, want in (("unet", back.unet, unet.state_dict()), ("vae", back.vae, vae.state_dict()),
                            ("text_encoder", back.text_encoder, te.state_dict())):
        assert next(mod.parameters()).dtype == torch.float16, comp
        counts[comp] = expect_equal(f"{rel} {comp}", mod.state_dict(), cast(want, torch.float16))
        log(f"verify {rel}: {comp}: {counts[comp]} tensors loaded by from_pretrained(variant='fp16'), all equal")
    with open(os.path.join(SD15_DIR, "reference", "tokens.json")) as f:
        cases = json.load(f)
    for c in cases:
        assert back.tokenizer(c["prompt"], padding="max_length", max_length=77, truncation=True).input_ids == \
            c["padded"], c["prompt"]
    log(f"verify {rel}: tokenizer: {len(cases)} prompts of tiny-sd15/reference/tokens.json tokenized alike")
    info = {"bytes": sum(os.path.getsize(os.path.join(dest, f)) for f in files)}
    MANIFEST["files"][rel + "/"] = {
        "what": "tiny-sd15 as StableDiffusionPipeline.save_pretrained(variant='fp16') writes it (all components "
                "in the fp16 variant; no non-variant weights)",
        "dtype": "F16", "layout": "diffusers Hugging Face folder", "files": files, "verified": counts, **info}
    return dest, files


# ---------------------------------------------------------------------------------------------
# from_single_file (recorded, not required)


def try_from_single_file(label, fn):
    try:
        fn()
        MANIFEST["from_single_file"][label] = "loaded; every tensor equal"
        log(f"from_single_file {label}: loaded, every tensor equal")
    except Exception as e:  # recorded: the converters above are the verification
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:600] if str(e) else ''}"
        MANIFEST["from_single_file"][label] = "failed: " + msg
        log(f"from_single_file {label}: FAILED ({msg})")


def from_single_file_checks(sd15_folder, unet, te, vae, pvae, sdxl_models):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    path = os.path.join(OUT, "tiny-sd15.safetensors")

    def pipe_sd15():
        p = StableDiffusionPipeline.from_single_file(path, config=sd15_folder, local_files_only=True,
                                                     safety_checker=None, requires_safety_checker=False)
        for comp, mod, want in (("unet", p.unet, unet), ("vae", p.vae, vae), ("text_encoder", p.text_encoder, te)):
            expect_equal(f"from_single_file {comp}", {k: v.half() for k, v in mod.state_dict().items()},
                         cast(want.state_dict(), torch.float16))

    def unet_sd15():
        m = UNet2DConditionModel.from_single_file(path, config=sd15_folder, subfolder="unet", local_files_only=True)
        expect_equal("from_single_file unet", {k: v.half() for k, v in m.state_dict().items()},
                     cast(unet.state_dict(), torch.float16))

    def vae_sd15():
        m = AutoencoderKL.from_single_file(os.path.join(OUT, "tiny-vae.safetensors"), config=sd15_folder,
                                           subfolder="vae", local_files_only=True)
        expect_equal("from_single_file vae", {k: v.half() for k, v in m.state_dict().items()},
                     cast(pvae.state_dict(), torch.float16))

    try_from_single_file("StableDiffusionPipeline tiny-sd15.safetensors", pipe_sd15)
    try_from_single_file("UNet2DConditionModel tiny-sd15.safetensors", unet_sd15)
    try_from_single_file("AutoencoderKL tiny-vae.safetensors", vae_sd15)

    xl_unet, xl_te, xl_te2, xl_vae, xl_sched = sdxl_models
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(os.path.join(SDXL_DIR, "tokenizer"))
        tok2 = CLIPTokenizer.from_pretrained(os.path.join(SDXL_DIR, "tokenizer_2"))
        StableDiffusionXLPipeline(vae=xl_vae, text_encoder=xl_te, text_encoder_2=xl_te2, tokenizer=tok,
                                  tokenizer_2=tok2, unet=xl_unet, scheduler=xl_sched,
                                  add_watermarker=False).save_pretrained(tmp)

        def pipe_sdxl():
            p = StableDiffusionXLPipeline.from_single_file(os.path.join(OUT, "tiny-sdxl.safetensors"), config=tmp,
                                                           local_files_only=True, add_watermarker=False)
            for comp, mod, want in (("unet", p.unet, xl_unet), ("vae", p.vae, xl_vae),
                                    ("text_encoder", p.text_encoder, xl_te)):
                expect_equal(f"from_single_file {comp}", {k: v.half() for k, v in mod.state_dict().items()},
                             cast(want.state_dict(), torch.float16))
            got2 = p.text_encoder_2.state_dict()
            meta = sorted(k for k, v in got2.items() if v.is_meta)
            if meta:
                # diffusers picks the SDXL encoder by width (is_clip_sdxl_model: embedders.0's position embedding
                # as wide as the model being loaded); both tiny encoders are 32 wide.
                k = "text_model.encoder.layers.0.mlp.fc1.weight"
                clip_l = torch.equal(got2[k].half(), xl_te.state_dict()[k[len("text_model."):]].half())
                raise RuntimeError(f"text_encoder_2: {meta} left on the meta device"
                                   + ("; it was loaded from CLIP-L (conditioner.embedders.0): diffusers picks the "
                                      "encoder by hidden width, and both tiny encoders are 32 wide" if clip_l else "")
                                   + " (unet, vae, text_encoder: every tensor equal)")
            expect_equal("from_single_file text_encoder_2", {k: v.half() for k, v in got2.items()},
                         cast(xl_te2.state_dict(), torch.float16))

        try_from_single_file("StableDiffusionXLPipeline tiny-sdxl.safetensors (config: a temporary save_pretrained "
                             "folder)", pipe_sdxl)


# ---------------------------------------------------------------------------------------------
# References


def models_from_file(path, unet, te, vae, extract_ema=False, vae_path=None):
    """Fresh fp32 diffusers models holding the file's values, converted by diffusers' converters."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    ck = load_file(path)
    fresh = tiny_configs.build_sd15()
    nu, nt, nv = fresh[0], fresh[1], fresh[2]
    nu.load_state_dict({k: v.float() for k, v in convert_ldm_unet_checkpoint(
        ck, dict(unet.config), extract_ema=extract_ema).items()}, strict=True)
    clip = convert_ldm_clip_checkpoint(ck)
    clip.pop("text_model.embeddings.position_ids")
    nt.load_state_dict({k[len("text_model."):]: v.float() for k, v in clip.items()}, strict=True)
    vck = load_file(vae_path) if vae_path else ck
    nv.load_state_dict({k: v.float() for k, v in convert_ldm_vae_checkpoint(vck, dict(vae.config)).items()},
                       strict=True)
    return nu.eval(), nt.eval(), nv.eval()


def render_pipe(pipe, path, **kwargs):
    """export_model.reference_image (its prompt, negative, seed, cfg, 64x64) with REF_STEPS; saved when `path`."""
    img = reference_image(pipe, REF_STEPS, **kwargs)
    if path:
        img.save(path)
    return np.asarray(img)


def render(models, sched, path, **kwargs):
    return render_pipe(sd15_pipeline(*models, sched_name=REF_SAMPLER, base_sched=sched), path, **kwargs)


def schedule_of(pipe):
    """The timesteps and sigmas the pipeline's scheduler ran with (after a render)."""
    sc = pipe.scheduler
    return {"timestep_spacing": sc.config.timestep_spacing, "timesteps": [round(float(t), 4) for t in sc.timesteps],
            "sigmas": [round(float(x), 4) for x in sc.sigmas]}


def diffusers_folder_reference(folder, ref, own, models):
    """tiny-sd15-diffusers/ rendered as a diffusers user would: from_pretrained(variant="fp16") in float32 (the fp16
    values computed in fp32), the scheduler swapped by from_config of the folder's PNDM config (its tokenizer too)."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float32,
                                                   local_files_only=True)
    assert pipe.safety_checker is None and pipe.scheduler.config.timestep_spacing == "leading"
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert all(p.dtype == torch.float32 for p in m.parameters())
    cls_name, extra = SCHEDULERS[REF_SAMPLER]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
    pipe.set_progress_bar_config(disable=True)
    name = f"tiny-sd15-diffusers.{REF_SAMPLER}.{REF_STEPS}.png"
    img = render_pipe(pipe, os.path.join(ref, name))
    diff = np.abs(img.astype(int) - own.astype(int))
    # Only the schedule differs: tiny-sd15.safetensors' models under this scheduler render the same image.
    same = render_pipe(sd15_pipeline(*models, base_sched=pipe.scheduler), None)
    assert np.array_equal(img, same), "the folder renders differently from tiny-sd15.safetensors under its scheduler"
    log(f"reference: {name}: from_pretrained(variant='fp16', torch_dtype=float32); vs tiny-sd15.safetensors through "
        f"the converters: max diff {diff.max()}/255 in {(diff > 0).sum()} of {diff.size} values (timestep_spacing "
        f"{pipe.scheduler.config.timestep_spacing} vs linspace); with the folder's scheduler: identical")
    entry = {"file": name, "checkpoint": "tiny-sd15-diffusers/", "unet_weights": "unet/diffusion_pytorch_model.fp16.safetensors",
             "vae": "tiny-sd15-diffusers/", "sampler": REF_SAMPLER, "steps": REF_STEPS,
             "loaded_with": "StableDiffusionPipeline.from_pretrained(folder, variant='fp16', torch_dtype=torch.float32)",
             "scheduler": f"{cls_name}.from_config(pipe.scheduler.config) (tiny-sd15-diffusers/scheduler/"
                          "scheduler_config.json: PNDMScheduler, timestep_spacing 'leading' written out)",
             "tokenizer": "tiny-sd15-diffusers/tokenizer (tokenizer.json)",
             **schedule_of(pipe),
             "why_it_differs": "the other images' Euler comes from PNDMScheduler(**tiny_configs.SCHEDULER).config, "
                               "which lists timestep_spacing in _use_default_values, so from_config takes Euler's "
                               "default 'linspace'; this folder's config writes 'leading' out. tiny-sd15.safetensors "
                               "through the converters under this scheduler renders this image exactly"}
    return entry, img


def give_text_model_alias(te):
    """diffusers 0.42.1's encode_prompt(clip_skip=...) reads text_encoder.text_model.final_layer_norm, which
    transformers >= 5.6 no longer has: CLIPTextModel was flattened (huggingface/diffusers#14124, open). An alias of
    the model to itself, set outside nn.Module's registry (so no cycle in modules() or state_dict()), lets diffusers'
    own code run unchanged."""
    if "text_model" not in te._modules and "text_model" not in te.__dict__:
        object.__setattr__(te, "text_model", te)
        return True
    return False


def clip_skip_reference(models, sched, ref):
    """tiny-sd15 (tests/fixtures/tiny-sd15's weights, here from tiny-sd15.safetensors through the converters) with
    diffusers' clip_skip=CLIP_SKIP, and the prompt embeddings diffusers' encode_prompt gives with it."""
    from safetensors.torch import save_file as save

    aliased = give_text_model_alias(models[1])
    pipe = sd15_pipeline(*models, sched_name=REF_SAMPLER, base_sched=sched)
    name = f"tiny-sd15.clip-skip-{CLIP_SKIP + 1}.{REF_SAMPLER}.{REF_STEPS}.png"
    img = render_pipe(pipe, os.path.join(ref, name), clip_skip=CLIP_SKIP)
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(IMAGE_PROMPT, torch.device("cpu"), 1, True, IMAGE_NEGATIVE, clip_skip=CLIP_SKIP)
        # What encode_prompt's clip_skip means: the hidden state CLIP_SKIP layers before the last, through the
        # final layer norm; diffusers applies it to the prompt only (the negative stays last_hidden_state).
        te, tok = pipe.text_encoder, pipe.tokenizer

        def ids(p):
            return torch.tensor([tok(p, padding="max_length", max_length=77, truncation=True).input_ids])

        def skipped(p):
            out = te(ids(p), output_hidden_states=True)
            return te.text_model.final_layer_norm(out.hidden_states[-(CLIP_SKIP + 1)]), out.last_hidden_state

        pos_skip, pos_last = skipped(IMAGE_PROMPT)
        neg_skip, neg_last = skipped(IMAGE_NEGATIVE)
        assert torch.equal(pos, pos_skip) and not torch.equal(pos, pos_last)
    if torch.equal(neg, neg_last):
        negative_note = ("diffusers applies clip_skip to the prompt only: negative_prompt_embeds is the negative's "
                         "last_hidden_state (all layers + final layer norm), as without clip skip")
    else:
        assert torch.equal(neg, neg_skip)
        negative_note = "clip_skip applied to the negative as to the prompt"
    assert pos.shape == neg.shape == (1, 77, te.config.hidden_size) and pos.dtype == neg.dtype == torch.float32
    save({"prompt_embeds": pos.contiguous(), "negative_prompt_embeds": neg.contiguous()},
         os.path.join(ref, "clip_skip.safetensors"), metadata={"format": "pt"})
    layers = te.config.num_hidden_layers
    log(f"reference: {name} and clip_skip.safetensors (diffusers clip_skip={CLIP_SKIP}; {negative_note})")
    entry = {"file": name, "checkpoint": "tiny-sd15.safetensors", "model_folder": "tests/fixtures/tiny-sd15",
             "unet_weights": "model.diffusion_model", "vae": "tiny-sd15.safetensors", "sampler": REF_SAMPLER,
             "steps": REF_STEPS, "clip_skip_a1111": CLIP_SKIP + 1, "diffusers_clip_skip": CLIP_SKIP, **schedule_of(pipe),
             "prompt_embeds": f"final_layer_norm(hidden_states[-{CLIP_SKIP + 1}]): the text encoder's final layer norm "
                              f"on the output of layer {layers - CLIP_SKIP} of {layers}",
             "negative_prompt_embeds": negative_note,
             "embeddings": f"clip_skip.safetensors: prompt_embeds, negative_prompt_embeds {list(pos.shape)} F32, from "
                           f"pipe.encode_prompt(prompt, negative_prompt=negative, clip_skip={CLIP_SKIP})"}
    if aliased:
        entry["text_encoder_alias"] = ("transformers' flattened CLIPTextModel has no text_model, which diffusers' "
                                       "clip_skip path reads (huggingface/diffusers#14124): the encoder was given an "
                                       "unregistered text_model alias to itself so diffusers' own code ran")
    return entry, img


def write_references(unet, te, vae, sched, diffusers_folder):
    import diffusers
    from PIL import Image

    ref = os.path.join(OUT, "reference")
    os.makedirs(ref, exist_ok=True)
    # The image path first reproduces tiny-sd15's own reference: from the F16 single file exactly as from the
    # rebuilt models; both within 1/255 of the stored PNG (made on another machine: float summation order).
    own = render(models_from_file(os.path.join(OUT, "tiny-sd15.safetensors"), unet, te, vae), sched, None)
    direct = render((unet, te, vae), sched, None)
    assert np.array_equal(own, direct), "the single file renders differently from the models it was written from"
    fixture = np.asarray(Image.open(os.path.join(SD15_DIR, "reference", f"image.{REF_SAMPLER}.{REF_STEPS}.png")))
    diff = np.abs(own.astype(int) - fixture.astype(int))
    assert diff.max() <= 1 and (diff > 0).sum() <= 16, f"max diff {diff.max()}, {(diff > 0).sum()} values"
    log(f"verify reference path: tiny-sd15.safetensors through the converters renders exactly as the rebuilt models; "
        f"vs tiny-sd15/reference/image.{REF_SAMPLER}.{REF_STEPS}.png max diff {diff.max()}/255 in "
        f"{(diff > 0).sum()} of {diff.size} values")

    bf16 = os.path.join(OUT, "tiny-sd15-bf16-ema.safetensors")
    cases = [
        (f"tiny-sd15-bf16-ema.{REF_SAMPLER}.{REF_STEPS}.png", "tiny-sd15-bf16-ema.safetensors", "model.diffusion_model",
         None, models_from_file(bf16, unet, te, vae)),
        (f"tiny-sd15-bf16-ema.ema.{REF_SAMPLER}.{REF_STEPS}.png", "tiny-sd15-bf16-ema.safetensors", "model_ema",
         None, models_from_file(bf16, unet, te, vae, extract_ema=True)),
        (f"tiny-sd15+vae.{REF_SAMPLER}.{REF_STEPS}.png", "tiny-sd15.safetensors", "model.diffusion_model",
         "tiny-vae.safetensors", models_from_file(os.path.join(OUT, "tiny-sd15.safetensors"), unet, te, vae,
                                                  vae_path=os.path.join(OUT, "tiny-vae.safetensors"))),
    ]
    images, arrays = [], {}
    for name, ckpt, unet_weights, vae_file, models in cases:
        arrays[name] = render(models, sched, os.path.join(ref, name))
        images.append({"file": name, "checkpoint": ckpt, "unet_weights": unet_weights,
                       "vae": vae_file or ckpt, "sampler": REF_SAMPLER, "steps": REF_STEPS})
    # Each variant must change the picture, else a test could not tell which weights were used.
    names = [c[0] for c in cases]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert not np.array_equal(arrays[names[i]], arrays[names[j]]), (names[i], names[j])
    assert not np.array_equal(arrays[names[2]], own) and not np.array_equal(arrays[names[1]], own)
    sd15_file = os.path.join(OUT, "tiny-sd15.safetensors")
    for entry, img in (diffusers_folder_reference(diffusers_folder, ref, own, models_from_file(sd15_file, unet, te, vae)),
                       clip_skip_reference(models_from_file(sd15_file, unet, te, vae), sched, ref)):
        images.append(entry)
        names.append(entry["file"])
        arrays[entry["file"]] = img
    assert not np.array_equal(arrays[names[-1]], own), "clip skip did not change the picture"
    with open(os.path.join(ref, "images.json"), "w") as f:
        json.dump({
            "prompt": IMAGE_PROMPT, "negative": IMAGE_NEGATIVE, "seed": IMAGE_SEED, "cfg": 7.0, "width": 64,
            "height": 64, "scheduler": f"{SCHEDULERS[REF_SAMPLER][0]}.from_config(tiny-sd15/scheduler/scheduler_config.json), "
                         "as export_model.write_references (tiny-sd15/reference/images.json)",
            "tokenizer": "tiny-sd15/tokenizer",
            "computed_in": "float32 (the file's values, loaded through diffusers' single-file converters)",
            "per_image": "an image's own scheduler, tokenizer and loaded_with override the above",
            "images": images,
            "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        }, f, indent=1)
    MANIFEST["files"]["reference/"] = {"what": "diffusers StableDiffusionPipeline images, see reference/images.json",
                                       "files": names + ["clip_skip.safetensors", "images.json"]}
    log(f"reference: wrote {', '.join(names)}")


# ---------------------------------------------------------------------------------------------
# Bad inputs


def write_bad(sd15_state):
    small = lambda *s: (torch.arange(int(np.prod(s)), dtype=torch.float32).reshape(s) / 100).half()  # noqa: E731
    bad = {}

    refiner = {
        "conditioner.embedders.0.model.token_embedding.weight": small(8, 4),
        "conditioner.embedders.0.model.positional_embedding": small(4, 4),
        "conditioner.embedders.0.model.text_projection": small(4, 4),
        "conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight": small(12, 4),
        "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": small(4),
        "model.diffusion_model.input_blocks.0.0.weight": small(4, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": small(1, 2560),
        "model.diffusion_model.label_emb.0.2.weight": small(1, 1),
        "first_stage_model.decoder.conv_out.weight": small(3, 4, 3, 3),
    }
    bad["bad/refiner.safetensors"] = (refiner, "SDXL-refiner-like: conditioner.embedders.0.model.* (OpenCLIP only, "
                                               "no CLIP-L) and label_emb.0.0.weight of width 2560")
    sd3 = {
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": small(12, 4),
        "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": small(8),
        "model.diffusion_model.x_embedder.proj.weight": small(4, 4, 2, 2),
        "model.diffusion_model.pos_embed": small(1, 4, 4),
        "first_stage_model.decoder.conv_out.weight": small(3, 4, 3, 3),
    }
    bad["bad/sd3.safetensors"] = (sd3, "SD3-like: model.diffusion_model.joint_blocks.*")
    flux = {
        "double_blocks.0.img_attn.qkv.weight": small(12, 4),
        "double_blocks.0.img_attn.norm.key_norm.scale": small(4),
        "single_blocks.0.linear1.weight": small(8, 4),
        "img_in.weight": small(4, 4),
        "time_in.in_layer.weight": small(4, 4),
    }
    bad["bad/flux.safetensors"] = (flux, "Flux-like (no prefix): double_blocks.*, single_blocks.*")
    placeholders = {k: small(1) for k in sd15_state}
    no_unet = {k: v for k, v in placeholders.items() if k.startswith(("cond_stage_model.", "first_stage_model."))}
    bad["bad/no_unet.safetensors"] = (no_unet, "tiny-sd15's text encoder and VAE key names only (no "
                                               "model.diffusion_model.*, no DDPM buffers); tensors are 1-element F16 "
                                               "placeholders, so the file stays a few KB")
    f8_key = "model.diffusion_model.input_blocks.0.0.weight"
    f8 = dict(placeholders)
    f8[f8_key] = sd15_state[f8_key].float().to(torch.float8_e4m3fn)
    bad["bad/f8.safetensors"] = (f8, f"tiny-sd15's full key set; {f8_key} is F8_E4M3 with its real shape "
                                     f"{list(sd15_state[f8_key].shape)}; every other tensor a 1-element F16 "
                                     "placeholder (so the file stays a few KB)")
    for rel, (state, what) in bad.items():
        dt = sorted({ST_DTYPE[v.dtype] for v in state.values()})
        write_safetensors(rel, state, what=what, dtype="/".join(dt), layout="see what")

    os.makedirs(os.path.join(OUT, "bad"), exist_ok=True)
    src = os.path.join(OUT, "tiny-sd15.safetensors")
    with open(src, "rb") as f:
        data = f.read()
    header_len = struct.unpack("<Q", data[:8])[0]
    cut = 8 + header_len + 1000
    with open(os.path.join(OUT, "bad", "truncated.safetensors"), "wb") as f:
        f.write(data[:cut])
    MANIFEST["files"]["bad/truncated.safetensors"] = dict(
        what=f"tiny-sd15.safetensors cut 1000 bytes into its data section (complete header of {header_len} bytes, "
             f"the data should be {len(data) - 8 - header_len} bytes)", dtype="F16", layout="tiny-sd15",
        **file_info(os.path.join(OUT, "bad", "truncated.safetensors")))

    hdr = {k: {"dtype": "F16", "shape": [1], "data_offsets": [2 * i, 2 * i + 2]}
           for i, k in enumerate(["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.bias"])}
    hb = json.dumps(hdr).encode()
    with open(os.path.join(OUT, "bad", "header_past_end.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb) + 1_000_000) + hb + b"\0" * 4)
    MANIFEST["files"]["bad/header_past_end.safetensors"] = dict(
        what="a valid header and data, but the length field says the header is 1,000,000 bytes longer than the file",
        dtype="F16", layout="2 tiny-sd15 keys", **file_info(os.path.join(OUT, "bad", "header_past_end.safetensors")))

    # The first bytes torch.save writes: a zip local header for model/data.pkl and the pickle's start.
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "model.ckpt")  # torch names the zip's folder after the file
        torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}}, ckpt)
        with open(ckpt, "rb") as f:
            head = f.read(96)
    assert head[:4] == b"PK\x03\x04" and b"data.pkl" in head and b"\x80\x02" in head, head
    with open(os.path.join(OUT, "bad", "model.ckpt"), "wb") as f:
        f.write(head)
    MANIFEST["files"]["bad/model.ckpt"] = dict(
        what="the first 96 bytes of a torch.save zip (PK header, model/data.pkl, pickle protocol 2 start): a "
             "pickle checkpoint, which must be refused without unpickling", dtype="-", layout="pickle zip",
        **file_info(os.path.join(OUT, "bad", "model.ckpt")))


# ---------------------------------------------------------------------------------------------


def main():
    torch.set_grad_enabled(False)
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    unet, te, vae, sched = rebuild_sd15()
    sdxl = rebuild_sdxl()
    # Extra check of the config-driven UNet names: lora_ldm derives them from the names instead.
    from lora_ldm import diffusers_to_ldm_names

    for u in (unet, sdxl[0]):
        ours, sd = unet_to_ldm(u), u.state_dict()
        theirs = diffusers_to_ldm_names(list(sd))
        assert len(ours) == len(theirs) == len(sd)
        for k, ldm in theirs.items():
            t = ours["model.diffusion_model." + ldm]
            assert t.data_ptr() == sd[k].data_ptr() and t.shape == sd[k].shape, (k, ldm)

    counts = {}
    counts.update(write_sd15_files(unet, te, vae, sched))
    counts.update(write_sdxl_file(*sdxl[:4]))
    pvae, c = write_vae_file(vae)
    counts.update(c)
    for rel, c in counts.items():
        MANIFEST["files"][rel]["verified"] = {comp: f"{n} tensors given back by diffusers' converter, all equal"
                                              for comp, n in c.items()}
    folder, _ = write_diffusers_folder(unet, te, vae, sched)
    write_references(unet, te, vae, sched, folder)
    write_bad(load_file(os.path.join(OUT, "tiny-sd15.safetensors")))
    from_single_file_checks(folder, unet, te, vae, pvae, sdxl)

    MANIFEST["source"] = "scripts/single_file_fixtures.py (run: /work/venv/bin/python scripts/single_file_fixtures.py)"
    MANIFEST["log"] = VERIFY_LOG
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1)

    total = 0
    for d, _, fs in sorted(os.walk(OUT)):
        for name in sorted(fs):
            p = os.path.join(d, name)
            size = os.path.getsize(p)
            total += size
            assert size < 16_000_000, p
            print(f"{size:>10}  {os.path.relpath(p, OUT)}")
    print(f"{total:>10}  total")


if __name__ == "__main__":
    main()
