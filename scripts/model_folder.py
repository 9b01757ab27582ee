"""Writes stipple model folders: from diffusers modules (export_pipeline), the tiny test fixtures
(tiny, tiny_sdxl, add_component), a diffusers pipeline folder (from_diffusers) and full-size random
models (random_model)."""
import json
import os
import shutil
import sys
import tempfile

import torch

from diffusers_reference import round_to_fp16_, write_references, write_references_sdxl, write_vae_encoder_reference
from onnx_export import (
    component_params,
    export_text_encoder,
    export_unet,
    export_vae_decoder,
    export_vae_encoder,
    vae_scale_factor,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_tokenizer(src_dir, out_dir, pad_token=None):
    """Copies a CLIP tokenizer folder; `pad_token` rewrites its pad token (SDXL's tokenizer_2 pads "!")."""
    if os.path.abspath(src_dir) != os.path.abspath(out_dir):
        shutil.copytree(src_dir, out_dir, dirs_exist_ok=True)
    if pad_token is None:
        return
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)
            cfg["pad_token"] = pad_token
            with open(path, "w") as f:
                json.dump(cfg, f, indent=2)


def export_pipeline(unet, text_encoders, vae, scheduler, tokenizer_dirs, out, dtype, storage_dtype,
                    family="sd1", force_zeros_for_empty_prompt=None):
    """Writes the model folder `out` from diffusers/transformers modules.

    text_encoders: [text_encoder] (SD1.x) or [text_encoder, text_encoder_2] (SDXL); tokenizer_dirs: one
    (source folder, pad token or None) per encoder, written to tokenizer/ and tokenizer_2/.
    """
    os.makedirs(out, exist_ok=True)
    components = []
    for i, te in enumerate(text_encoders):
        component = "text_encoder" if i == 0 else f"text_encoder_{i + 1}"
        export_text_encoder(component, te, out, storage_dtype)
        components.append(component)
    export_unet(unet, out, dtype, storage_dtype)
    lat = unet.config.sample_size
    export_vae_decoder(vae, lat, out, dtype, storage_dtype)
    export_vae_encoder(vae, lat * vae_scale_factor(vae), out, dtype, storage_dtype)
    components += ["unet", "vae_decoder", "vae_encoder"]
    import te_fp16  # the text encoders' fp16 graphs beside the fp32 ones (--te-precision)
    import vae_fp16  # the VAE's fp16 graphs beside the fp32 ones (--vae-precision)

    import vae_fused  # the VAE decoder's fused CUDA graph (--vae-graph)

    vae_fp16.add_to(out)
    try:
        vae_fused.fuse(out)
    except (SystemExit, Exception) as e:  # optional: the folder works without it (--vae-graph)
        print(f"{out}: no fused VAE graph ({e}); the plain fp16 one serves", file=sys.stderr)
    te_fp16.add_to(out)
    import te_fused  # the text encoders' fused fp16 graphs (--te-graph)

    te_fused.add_to(out)

    write_scheduler(scheduler, out)
    for i, (src, pad) in enumerate(tokenizer_dirs):
        write_tokenizer(src, os.path.join(out, "tokenizer" if i == 0 else f"tokenizer_{i + 1}"), pad)
    write_index(out, family, dtype, vae, lat, components, force_zeros_for_empty_prompt)


def write_scheduler(scheduler, out):
    sched_dir = os.path.join(out, "scheduler")
    os.makedirs(sched_dir, exist_ok=True)
    cfg = dict(scheduler.config)
    if isinstance(cfg.get("_use_default_values"), (list, set, tuple)):
        cfg["_use_default_values"] = sorted(cfg["_use_default_values"])  # a set: sorted, the same every run
    with open(os.path.join(sched_dir, "scheduler_config.json"), "w") as f:
        json.dump(cfg, f, indent=1, default=str)


def write_index(out, family, dtype, vae, lat, components, force_zeros_for_empty_prompt=None):
    """model_index.json: family, dtype, VAE factors, default size (latent size `lat` of the UNet config)."""
    vae_factor = vae_scale_factor(vae)
    index = {
        "format": 1,
        "family": family,
        "dtype": "fp16" if dtype == torch.float16 else "fp32",
        "vae_scale_factor": vae_factor,
        "vae_scaling_factor": vae.config.scaling_factor,
        "default_width": lat * vae_factor,
        "default_height": lat * vae_factor,
        "components": components,
    }
    if force_zeros_for_empty_prompt is not None:
        # diffusers' SDXL pipeline config: an absent negative prompt conditions on zeros, not on "".
        index["force_zeros_for_empty_prompt"] = bool(force_zeros_for_empty_prompt)
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=1)


def tiny_models(family):
    """The tiny fixture's modules exactly as --tiny makes them: (unet, [encoders], vae, scheduler)."""
    import tiny_configs

    torch.manual_seed(0)
    if family == "sdxl":
        unet, te, te2, vae, scheduler = tiny_configs.build_sdxl()
        encoders = [te, te2]
    elif family == "sd2":
        unet, te, vae, scheduler = tiny_configs.build_sd2()
        encoders = [te]
    elif family == "sd1-inpaint":
        unet, te, vae, scheduler = tiny_configs.build_sd15_inpaint()
        encoders = [te]
    else:
        unet, te, vae, scheduler = tiny_configs.build_sd15()
        encoders = [te]
    for m in (unet, *encoders, vae):
        round_to_fp16_(m)
    if family == "sd2":
        shift_to_v_test(unet, V_TEST_TARGET)
    return unet, encoders, vae, scheduler


# A1111's test of an SD2 UNet for v-prediction (modules/sd_models_config.py): every latent 0.5, timestep
# 999, a two-token context of 0.5; v-prediction when the output's mean minus 0.5 is below -1. Random tiny
# weights answer it by chance, so the tiny SD2 UNet's conv_out bias is shifted to make the answer v
# (mean -2.5): files of it without metadata are then v-prediction by the test as a real 768-v file is.
V_TEST_TARGET = -2.5


def v_test_value(unet):
    """The mean A1111's one-step test compares with -1 (fp32, CPU)."""
    ctx = unet.config.cross_attention_dim
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5)
    with torch.no_grad():
        out = unet(x, torch.tensor([999.0]), torch.full((1, 2, ctx), 0.5)).sample
    return float((out - x[:, : out.shape[1]]).mean())


def shift_to_v_test(unet, target):
    """Moves conv_out's bias (fp16-representable) so v_test_value is about `target`."""
    m = v_test_value(unet)
    with torch.no_grad():
        unet.conv_out.bias.add_(target - m)
        unet.conv_out.bias.copy_(unet.conv_out.bias.half().float())
    return v_test_value(unet)


def add_component(model_dir, component):
    """Adds one component (vae_encoder) to an existing tiny fixture folder, leaving its files as they are.

    The tiny model is rebuilt as --tiny builds it; its VAE decoder must equal the folder's
    vae_decoder/weights.safetensors bit for bit, so the new component shares the fixture's VAE.
    """
    from safetensors.torch import load_file

    if component != "vae_encoder":
        raise SystemExit(f"--add: only vae_encoder can be added, not {component}")
    index_path = os.path.join(model_dir, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    _, _, vae, _ = tiny_models(index["family"])

    stored = load_file(os.path.join(model_dir, "vae_decoder", "weights.safetensors"))
    rebuilt = component_params("vae_decoder", vae)
    if set(stored) != set(rebuilt):
        raise SystemExit(f"{model_dir}: vae_decoder parameter names differ from the rebuilt tiny VAE")
    storage = {v.dtype for v in stored.values()}
    if len(storage) != 1:
        raise SystemExit(f"{model_dir}: vae_decoder weights in several dtypes {storage}")
    storage = storage.pop()
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    for name, p in rebuilt.items():
        a = p.detach().to(storage).contiguous()
        b = stored[name]
        if a.shape != b.shape or not torch.equal(a.view(bits[a.element_size()]), b.view(bits[b.element_size()])):
            raise SystemExit(f"{model_dir}: rebuilt {name} differs from vae_decoder/weights.safetensors")
    print(f"rebuilt VAE decoder equals {model_dir}/vae_decoder/weights.safetensors bit for bit ({len(stored)} tensors)")

    dtype = torch.float16 if index["dtype"] == "fp16" else torch.float32
    lat = index["default_width"] // index["vae_scale_factor"]
    export_vae_encoder(vae, lat * vae_scale_factor(vae), model_dir, dtype, storage)
    write_vae_encoder_reference(model_dir, vae)
    if component not in index["components"]:
        index["components"].append(component)
        with open(index_path, "w") as f:
            json.dump(index, f, indent=1)
    print(f"added {component} to {model_dir}")


def tiny_tokenizer(dest):
    """The real CLIP vocabulary: the SD1 fixture's copy when present, else built by clip_vocab."""
    import clip_vocab

    existing = os.path.join(ROOT, "tests", "fixtures", "tiny-sd15", "tokenizer")
    if os.path.abspath(existing) != os.path.abspath(dest) and os.path.exists(os.path.join(existing, "vocab.json")):
        shutil.copytree(existing, dest, dirs_exist_ok=True)
    else:
        os.makedirs(dest, exist_ok=True)
        clip_vocab.main([dest])


def tiny(out):
    unet, (text_encoder,), vae, scheduler = tiny_models("sd1")
    tok_dir = os.path.join(out, "tokenizer")
    tiny_tokenizer(tok_dir)
    # Weights are fp16 values stored as F16 (half the fixture size) under an fp32 graph: the patch
    # step converts, and the references are computed from the same rounded values.
    export_pipeline(unet, [text_encoder], vae, scheduler, [(tok_dir, None)], out, torch.float32, torch.float16)
    write_references(out, unet, text_encoder, vae, scheduler, tok_dir)
    write_vae_encoder_reference(out, vae)


def tiny_sdxl(out):
    unet, (te, te2), vae, scheduler = tiny_models("sdxl")
    with tempfile.TemporaryDirectory() as tmp:
        tiny_tokenizer(tmp)
        export_pipeline(unet, [te, te2], vae, scheduler, [(tmp, None), (tmp, "!")], out, torch.float32,
                        torch.float16, family="sdxl", force_zeros_for_empty_prompt=True)
    tok_dirs = [os.path.join(out, "tokenizer"), os.path.join(out, "tokenizer_2")]
    write_references_sdxl(out, unet, te, te2, vae, scheduler, tok_dirs)
    write_vae_encoder_reference(out, vae)


def tiny_sd2(out):
    """tests/fixtures/tiny-sd2: SD 2.x-shaped (linear projections, gelu encoder padding with "!",
    v-prediction), no fused CUDA graph."""
    unet, (te,), vae, scheduler = tiny_models("sd2")
    with tempfile.TemporaryDirectory() as tmp:
        tiny_tokenizer(tmp)
        export_pipeline(unet, [te], vae, scheduler, [(tmp, "!")], out, torch.float32, torch.float16, family="sd2")
    write_references(out, unet, te, vae, scheduler, os.path.join(out, "tokenizer"))
    write_vae_encoder_reference(out, vae)


def tiny_sd15_inpaint(out):
    """tests/fixtures/tiny-sd15-inpaint: tiny-sd15's architecture with a 9-channel inpainting UNet.
    Its references (diffusers' StableDiffusionInpaintPipeline) come from scripts/img2img_reference.py."""
    unet, (te,), vae, scheduler = tiny_models("sd1-inpaint")
    tok_dir = os.path.join(out, "tokenizer")
    tiny_tokenizer(tok_dir)
    export_pipeline(unet, [te], vae, scheduler, [(tok_dir, None)], out, torch.float32, torch.float16)


def from_diffusers(src, out, dtype_name):
    from diffusers import DiffusionPipeline

    dtype = torch.float16 if dtype_name == "fp16" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32, safety_checker=None)
    unet = pipe.unet.to(dtype).eval()
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    encoders = [pipe.text_encoder.to(dtype).eval()]
    tokenizers = [pipe.tokenizer]
    if sdxl:
        encoders.append(pipe.text_encoder_2.to(dtype).eval())
        tokenizers.append(pipe.tokenizer_2)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for i, t in enumerate(tokenizers):
            d = os.path.join(tmp, str(i))
            t.save_pretrained(d)
            dirs.append((d, None))
        export_pipeline(unet, encoders, pipe.vae.eval(), pipe.scheduler, dirs, out, dtype, dtype,
                        family="sdxl" if sdxl else "sd1",
                        force_zeros_for_empty_prompt=pipe.config.get("force_zeros_for_empty_prompt") if sdxl else None)


def random_model(family, out, dtype_name, tokenizer_dir, device):
    """Full-size SD1.5 or SDXL architecture with random weights: true speed figures, no download."""
    import tiny_configs

    dtype = torch.float16 if dtype_name == "fp16" else torch.float32
    with torch.no_grad():
        if family == "sdxl":
            unet, te, te2, vae, sched = tiny_configs.build_sdxl_random(device)
            export_pipeline(unet.to(dtype), [te.to(dtype), te2.to(dtype)], vae, sched,
                            [(tokenizer_dir, None), (tokenizer_dir, "!")], out, dtype, dtype, family="sdxl",
                            force_zeros_for_empty_prompt=True)
        else:
            unet, te, vae, sched = tiny_configs.build_sd15_random(device)
            export_pipeline(unet.to(dtype), [te.to(dtype)], vae, sched, [(tokenizer_dir, None)], out, dtype, dtype)


# ---------------------------------------------------------------------------------------------
# Architecture templates: the graphs and weight maps without weights, gzip-compressed
