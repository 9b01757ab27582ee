#!/usr/bin/env python3
"""Writes a stipple model folder from a diffusers SD1.x or SDXL pipeline, and the tiny test fixtures.

    python scripts/export_model.py --tiny                       # tests/fixtures/tiny-sd15 + references
    python scripts/export_model.py --tiny --family sdxl         # tests/fixtures/tiny-sdxl + references
    python scripts/export_model.py --from DIR --out models/NAME [--dtype fp16]     # SD1.x or SDXL folder
    python scripts/export_model.py --random sd15 --dtype fp16 --device cuda --out /tmp/sd15   # benchmarks
    python scripts/export_model.py --random sdxl --dtype fp16 --device cuda --out /tmp/sdxl
    python scripts/export_model.py --optimize cuda --model models/NAME   # + ORT's fused CUDA UNet (ort_fused.py)
    python scripts/export_model.py --template sd15-fp16 [--optimize cuda] [--out DIR]   # templates/sd15-fp16
    python scripts/export_model.py --template clip                        # templates/clip (CLIP BPE vocabulary)
    python scripts/export_model.py --add vae_encoder --model tests/fixtures/tiny-sd15   # one new component

Needs PyTorch, diffusers, transformers and onnx (a virtual environment outside the repo:
`python3 -m venv ~/venv && ~/venv/bin/pip install torch diffusers transformers onnx onnxruntime`, about two minutes
and 5 GB). `--tiny` takes about a minute on 2 CPU cores; a real SD1.5 export about 5 minutes.

The layout (README, "Models"), per component (text_encoder, text_encoder_2 for SDXL, unet, vae_decoder,
vae_encoder):
  model.onnx          graph; every parameter initializer stored as external data in `weights.bin`, a file
                      that never exists on disk: stipple assembles it in memory from weights.safetensors
  weights.safetensors the parameters under their diffusers names (text encoder with the classic
                      `text_model.` level), torch layout
  weightmap.json      initializer -> source parameter, transform (identity|transpose), dtype, offset, length
  config.json         the diffusers/transformers config the component was built from
plus model_index.json (family, dtype, defaults) and tokenizer/ (vocab.json, merges.txt; SDXL also
tokenizer_2/, which pads with "!" where tokenizer/ pads with <|endoftext|>).

Text encoders output last_hidden_state, the pooled output (`pooler_output`; `text_embeds`, pooled and
projected, for SDXL's second encoder) and penultimate_hidden_state (what SDXL conditions on). The SDXL
UNet takes `text_embeds` and `time_ids` (the added conditioning) besides sample, timestep and context.
The VAE encoder (for image-to-image) takes `sample` [batch, 3, H, W] in [-1, 1] and outputs
`latent_parameters` [batch, 2*latent_channels, H/f, W/f]: the moments after quant_conv, mean and logvar
concatenated on channels, before the [-30, 20] clamp of diffusers' DiagonalGaussianDistribution. Both VAE
graphs are fp32 whatever the model dtype (fp16 VAEs overflow).

Two export facts keep every weight under its own name: no constant folding (Linear weights stay
`...to_q.weight` behind an explicit Transpose, so every transform is the identity) and no parameters
with equal values at export time (the exporter would merge them into one initializer).

--template NAME (sd15-fp32, sd15-fp16, sdxl-fp32, sdxl-fp16) writes the architecture template stipple
embeds to templates/NAME: the full-size architecture with random weights (tiny_configs,
built and exported one component at a time: SDXL fp32 is 14 GB of parameters), kept as the layout above
without weights.safetensors and tokenizers; model.onnx and weightmap.json (and the fused
model.cuda.onnx / weightmap.cuda.json with --optimize cuda) are stored as deterministic `gzip -9` files
(.gz, no name or time in the header), next to each component's config.json, model_index.json and
scheduler/scheduler_config.json. Weight-map sources are the diffusers parameter names, as in a model folder.
The graphs are traced at an 8x8 example latent: they do not depend on it (checked byte for byte against
the sample_size exports, SD1.5 fp32 and the tiny UNets in fp32/fp16), and fp16 tracing on a CPU without
AVX-512 FP16 is otherwise too slow. On 2 CPU cores an SD1.5 template takes ~2.5 min (7.6 GB peak in
fp16), an SDXL one ~7 min (14.8 GB peak in fp32). With --optimize cuda, sd15-fp16 went over 24 GB here (ORT's
optimizer on the 3.4 GB fp32 graph; killed): make it on a machine with more memory (the GPU machine).
--template clip writes templates/clip/vocab.json.gz and merges.txt.gz from the tiny fixture's tokenizer.
Each template is checked after writing (scripts/check_template.py).

--add vae_encoder --model DIR adds the VAE encoder to an existing tiny fixture without touching its other
files (model_index.json gains the component): the tiny model is rebuilt as --tiny builds it, its VAE
decoder must equal DIR/vae_decoder/weights.safetensors bit for bit, and the encoder, its weights and
reference/vae_encoder.safetensors (an image batch, diffusers' latent_dist mean and logvar) are written.

With --tiny it also writes the tiny UNet's fused CUDA graph (--optimize cuda) with the sha256 of each
weight the optimizer wrote (reference/unet_cuda_initializers.json), and <fixture>/reference/: token ids,
text embeddings, torch.randn latents (SD1), one UNet output and the final images of the diffusers pipeline (StableDiffusionPipeline or
StableDiffusionXLPipeline) for each scheduler, and reference/vae_encoder.safetensors (as --add does).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

EXTERNAL_FILE = "weights.bin"
ALIGN = 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TextEncoderWrapper(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        out = self.m(input_ids, output_hidden_states=True, return_dict=True)
        # CLIPTextModelWithProjection (SDXL's second encoder) pools and projects: `text_embeds`.
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        # The penultimate hidden state (before the final norm) is what clip-skip and SDXL use.
        return out.last_hidden_state, pooled, out.hidden_states[-2]


class UnetWrapper(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class UnetAddedWrapper(torch.nn.Module):
    """SDXL's UNet: the added conditioning (pooled text embedding, size/crop time ids) as graph inputs."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.m(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


class VaeDecoderWrapper(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.m = vae

    def forward(self, latent_sample):
        return self.m.decode(latent_sample, return_dict=False)[0]


class VaeEncoderWrapper(torch.nn.Module):
    """Image in [-1, 1] -> the moments after quant_conv (mean and logvar concatenated on channels), what
    diffusers builds its DiagonalGaussianDistribution from (which then clamps logvar to [-30, 20])."""

    def __init__(self, vae):
        super().__init__()
        self.m = vae

    def forward(self, sample):
        h = self.m.encoder(sample)
        if self.m.quant_conv is not None:
            h = self.m.quant_conv(h)
        return h


def source_name(component, init_name):
    """Maps an exported initializer name (of the wrapper) to the parameter name stored in weights."""
    if not init_name.startswith("m."):
        return None
    name = init_name[2:]
    # transformers 5 flattened CLIPTextModel; released checkpoints (and adapter keys) have `text_model.`.
    # CLIPTextModelWithProjection keeps it, and its `text_projection` sits beside it.
    if component.startswith("text_encoder") and not name.startswith(("text_model.", "text_projection.")):
        name = "text_model." + name
    return name


VAE_PARTS = {"vae_decoder": ("decoder.", "post_quant_conv."), "vae_encoder": ("encoder.", "quant_conv.")}


def component_params(component, module):
    params = {}
    for name, p in module.named_parameters():
        # Each VAE graph uses only its half of the VAE.
        if component in VAE_PARTS and not name.startswith(VAE_PARTS[component]):
            continue
        params[source_name(component, "m." + name)] = p
    return params


def make_external(init, offset, length):
    """Turns `init` into external data in EXTERNAL_FILE at the next aligned offset; returns it."""
    import onnx

    offset = (offset + ALIGN - 1) // ALIGN * ALIGN
    init.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data"):
        init.ClearField(field)
    init.data_location = onnx.TensorProto.EXTERNAL
    del init.external_data[:]
    for k, v in (("location", EXTERNAL_FILE), ("offset", str(offset)), ("length", str(length))):
        e = init.external_data.add()
        e.key, e.value = k, v
    return offset


def onnx_export(wrapper, args, path, names, dynamic_axes, fold_constants):
    """torch.onnx.export with the settings every stipple graph uses (TorchScript exporter, opset 17)."""
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            path,
            input_names=names[0],
            output_names=names[1],
            dynamic_axes=dynamic_axes,
            opset_version=17,
            do_constant_folding=fold_constants,
            dynamo=False,
        )


def export_component(component, wrapper, args, names, dynamic_axes, out_dir, storage_dtype):
    """Exports one component and rewrites it into the stipple layout.

    storage_dtype None writes no weights.safetensors (a template). The exported weights are never read
    back: an initializer's length comes from its shape and dtype, so a graph over 2 GB (torch writes its
    weights beside it) costs no second copy of them in memory.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    os.makedirs(out_dir, exist_ok=True)
    params = component_params(component, wrapper.m)
    entries = []
    offset = 0
    seen = set()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx_export(wrapper, args, path, names, dynamic_axes, fold_constants=False)
        model = onnx.load(path, load_external_data=False)
        for init in model.graph.initializer:
            src = source_name(component, init.name)
            if src is None or src not in params:
                if uses_external_data(init):
                    load_external_data_for_tensor(init, tmp)  # a constant: it stays embedded in the graph
                    init.data_location = onnx.TensorProto.DEFAULT
                    del init.external_data[:]
                continue
            shape = tuple(init.dims)
            expect = tuple(params[src].shape)
            if shape != expect:
                raise SystemExit(f"{component}: initializer {init.name} has shape {shape}, parameter {expect}")
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            length = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            offset = make_external(init, offset, length)
            entries.append(
                {
                    "name": init.name,
                    "source": src,
                    "transform": "identity",
                    "dtype": dtype.name,
                    "shape": list(shape),
                    "offset": offset,
                    "length": length,
                }
            )
            offset += length
            seen.add(src)
    missing = sorted(set(params) - seen)
    if missing:
        raise SystemExit(
            f"{component}: parameters without their own initializer (equal values merged by the exporter?): "
            + ", ".join(missing[:10])
        )
    onnx.save(model, os.path.join(out_dir, "model.onnx"))
    if storage_dtype is not None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().to(storage_dtype).cpu().contiguous() for k, v in params.items()}
        save_file(tensors, os.path.join(out_dir, "weights.safetensors"))
    with open(os.path.join(out_dir, "weightmap.json"), "w") as f:
        json.dump({"format": 1, "external_file": EXTERNAL_FILE, "initializers": entries}, f, indent=1)
    return model


def write_config(module, out_dir):
    cfg = module.config
    data = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    # diffusers lists the defaulted keys from a set: sorted, the file is the same on every run.
    if isinstance(data.get("_use_default_values"), (list, set, tuple)):
        data["_use_default_values"] = sorted(data["_use_default_values"])
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)


def export_text_encoder(component, text_encoder, out, storage_dtype):
    """One CLIP text encoder: input_ids -> last_hidden_state, pooled (or text_embeds), penultimate."""
    dev = next(text_encoder.parameters()).device
    te_dir = os.path.join(out, component)
    pooled = "text_embeds" if hasattr(text_encoder, "text_projection") else "pooler_output"
    # The text encoder runs in fp32 whatever the model dtype: transformers' CLIP mixes fp32 and fp16
    # in its LayerNorms when exported in fp16, and it costs ~1% of an image. Its weights are still
    # stored in the model dtype.
    text_encoder = text_encoder.float()
    export_component(
        component,
        TextEncoderWrapper(text_encoder),
        (torch.zeros((1, 77), dtype=torch.int64, device=dev),),
        (["input_ids"], ["last_hidden_state", pooled, "penultimate_hidden_state"]),
        {"input_ids": {0: "batch", 1: "sequence"}},
        te_dir,
        storage_dtype,
    )
    write_config(text_encoder, te_dir)


def unet_export_spec(unet, dtype, lat=None):
    """(wrapper, example args, (input names, output names), dynamic axes) of the UNet's ONNX export.

    SDXL's added conditioning (`addition_embed_type` text_time) makes two more inputs. `lat`: the example
    latent size (default the config's sample_size; the graph does not depend on it, see --template).
    """
    dev = next(unet.parameters()).device
    lat = lat or unet.config.sample_size
    ctx = unet.config.cross_attention_dim
    args = [
        torch.randn(2, unet.config.in_channels, lat, lat, dtype=dtype, device=dev),
        torch.tensor([500.0, 500.0], dtype=dtype, device=dev),
        torch.randn(2, 77, ctx, dtype=dtype, device=dev),
    ]
    names = ["sample", "timestep", "encoder_hidden_states"]
    axes = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
        "out_sample": {0: "batch", 2: "height", 3: "width"},
    }
    wrapper = UnetWrapper(unet)
    if unet.config.addition_embed_type == "text_time":
        n_ids = 6  # original size, crop top-left, target size
        pooled = unet.config.projection_class_embeddings_input_dim - n_ids * unet.config.addition_time_embed_dim
        args += [
            torch.randn(2, pooled, dtype=dtype, device=dev),
            torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2, dtype=dtype, device=dev),
        ]
        names += ["text_embeds", "time_ids"]
        axes.update({"text_embeds": {0: "batch"}, "time_ids": {0: "batch"}})
        wrapper = UnetAddedWrapper(unet)
    return wrapper, tuple(args), (names, ["out_sample"]), axes


def export_unet(unet, out, dtype, storage_dtype, lat=None):
    un_dir = os.path.join(out, "unet")
    wrapper, args, names, axes = unet_export_spec(unet, dtype, lat)
    export_component("unet", wrapper, args, names, axes, un_dir, storage_dtype)
    write_config(unet, un_dir)


def vae_storage_dtype(dtype, storage_dtype):
    """The VAE graphs stay fp32 (fp16 VAEs overflow: NaN / black images; SDXL's force_upcast), and so do
    the weights of an fp16 model's VAE; the tiny fixtures keep fp16-rounded values stored as F16."""
    return storage_dtype if storage_dtype != torch.float16 or dtype == torch.float32 else torch.float32


def export_vae_decoder(vae, lat, out, dtype, storage_dtype):
    dev = next(vae.parameters()).device
    vae_dir = os.path.join(out, "vae_decoder")
    vae32 = vae.float()
    export_component(
        "vae_decoder",
        VaeDecoderWrapper(vae32),
        (torch.randn(1, vae.config.latent_channels, lat, lat, device=dev),),
        (["latent_sample"], ["sample"]),
        {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "height", 3: "width"}},
        vae_dir,
        vae_storage_dtype(dtype, storage_dtype),
    )
    write_config(vae, vae_dir)


def export_vae_encoder(vae, size, out, dtype, storage_dtype):
    """Image [batch, 3, H, W] in [-1, 1] -> latent_parameters [batch, 2 * latent_channels, H/f, W/f]."""
    dev = next(vae.parameters()).device
    vae_dir = os.path.join(out, "vae_encoder")
    vae32 = vae.float()
    export_component(
        "vae_encoder",
        VaeEncoderWrapper(vae32),
        (torch.rand(1, vae.config.in_channels, size, size, device=dev) * 2 - 1,),
        (["sample"], ["latent_parameters"]),
        {"sample": {0: "batch", 2: "height", 3: "width"}, "latent_parameters": {0: "batch", 2: "height", 3: "width"}},
        vae_dir,
        vae_storage_dtype(dtype, storage_dtype),
    )
    write_config(vae, vae_dir)


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

    write_scheduler(scheduler, out)
    for i, (src, pad) in enumerate(tokenizer_dirs):
        write_tokenizer(src, os.path.join(out, "tokenizer" if i == 0 else f"tokenizer_{i + 1}"), pad)
    write_index(out, family, dtype, vae, lat, components, force_zeros_for_empty_prompt)


def vae_scale_factor(vae):
    return 2 ** (len(vae.config.block_out_channels) - 1)


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


# ---------------------------------------------------------------------------------------------
# Tiny fixtures and references

PROMPTS = [
    "a red fox",
    "a photo of a cat",
    "A Photo Of An ASTRONAUT riding a horse, HIGHLY detailed!!!",
    "café Ünïcode naïve 日本語 emoji 🦊 fox",
    "tom &amp; jerry's 1990s   cartoon,\n\tsecond line",
    " ".join(["a long prompt about a majestic fox in a snowy forest at dawn"] * 8),
    "",
]
SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp-2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
}
IMAGE_PROMPT = "a red fox in the snow"
IMAGE_NEGATIVE = "blurry"
IMAGE_SEED = 42
LATENT_CASES = [(0, [1, 4, 8, 8]), (1, [1, 4, 32, 32]), (42, [2, 4, 32, 32]), (2**32 + 7, [1, 4, 16, 24]), (7, [1, 3])]


def reference_image(pipe, steps, negative=IMAGE_NEGATIVE, height=64, width=64, **kwargs):
    """The reference settings on a diffusers pipeline: IMAGE_PROMPT, seed IMAGE_SEED through a CPU generator
    (the pipeline draws the initial latents from it), cfg 7. Returns the PIL image."""
    g = torch.Generator("cpu").manual_seed(IMAGE_SEED)
    with torch.no_grad():
        return pipe(IMAGE_PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=7.0,
                    generator=g, height=height, width=width, **kwargs).images[0]


def round_to_fp16_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


def write_references(out, unet, text_encoder, vae, scheduler, tokenizer_dir):
    import diffusers
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    ref = os.path.join(out, "reference")
    os.makedirs(ref, exist_ok=True)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)

    tokens = []
    for p in PROMPTS:
        tokens.append(
            {
                "prompt": p,
                "ids": tok(p, add_special_tokens=False).input_ids,
                "padded": tok(p, padding="max_length", max_length=77, truncation=True).input_ids,
            }
        )
    with open(os.path.join(ref, "tokens.json"), "w") as f:
        json.dump(tokens, f, indent=1, ensure_ascii=False)

    tensors = {}
    with torch.no_grad():
        for i, p in enumerate(PROMPTS[:3]):
            ids = torch.tensor([tok(p, padding="max_length", max_length=77, truncation=True).input_ids])
            out_te = text_encoder(ids, output_hidden_states=True)
            tensors[f"embedding.{i}"] = out_te.last_hidden_state[0].contiguous()
            tensors[f"pooled.{i}"] = out_te.pooler_output[0].contiguous()
        for seed, shape in LATENT_CASES:
            g = torch.Generator("cpu").manual_seed(seed)
            tensors[f"latents.{seed}." + "x".join(map(str, shape))] = torch.randn(shape, generator=g)
        g = torch.Generator("cpu").manual_seed(5)
        sample = torch.randn(2, 4, 32, 32, generator=g)
        ehs = torch.randn(2, 77, 32, generator=g)
        t = torch.tensor([981.0, 981.0])
        tensors["unet.sample"] = sample
        tensors["unet.timestep"] = t
        tensors["unet.encoder_hidden_states"] = ehs
        tensors["unet.out"] = unet(sample, t, ehs).sample
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ref, "tensors.safetensors"))

    images = []
    for slug, (cls_name, extra) in SCHEDULERS.items():
        cls = getattr(diffusers, cls_name)
        sched = cls.from_config(scheduler.config, **extra)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tok,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        for steps in (4, 8):
            img = reference_image(pipe, steps)
            name = f"image.{slug}.{steps}.png"
            img.save(os.path.join(ref, name))
            images.append({"file": name, "sampler": slug, "steps": steps})
    with open(os.path.join(ref, "images.json"), "w") as f:
        json.dump(
            {
                "prompt": IMAGE_PROMPT,
                "negative": IMAGE_NEGATIVE,
                "seed": IMAGE_SEED,
                "cfg": 7.0,
                "width": 64,
                "height": 64,
                "images": images,
                "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            },
            f,
            indent=1,
        )


def write_references_sdxl(out, unet, text_encoder, text_encoder_2, vae, scheduler, tok_dirs):
    """The SDXL references: ids per tokenizer, each encoder's penultimate hidden state, diffusers'
    concatenated conditioning and pooled embedding, one UNet output with the added conditioning, images."""
    import diffusers
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    ref = os.path.join(out, "reference")
    os.makedirs(ref, exist_ok=True)
    tok = CLIPTokenizer.from_pretrained(tok_dirs[0])
    tok2 = CLIPTokenizer.from_pretrained(tok_dirs[1])
    assert tok2.pad_token_id == 0, tok2.pad_token_id

    def padded(t, p):
        return t(p, padding="max_length", max_length=77, truncation=True).input_ids

    tokens = [
        {"prompt": p, "ids": tok(p, add_special_tokens=False).input_ids, "padded": padded(tok, p),
         "padded_2": padded(tok2, p)}
        for p in PROMPTS
    ]
    with open(os.path.join(ref, "tokens.json"), "w") as f:
        json.dump(tokens, f, indent=1, ensure_ascii=False)

    def pipeline(sched):
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
            tokenizer_2=tok2, unet=unet, scheduler=sched, add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    tensors = {}
    pipe = pipeline(scheduler)
    with torch.no_grad():
        for i, p in enumerate(PROMPTS[:3]):
            ids = torch.tensor([padded(tok, p)])
            ids2 = torch.tensor([padded(tok2, p)])
            o1 = text_encoder(ids, output_hidden_states=True)
            o2 = text_encoder_2(ids2, output_hidden_states=True)
            tensors[f"te1.penultimate.{i}"] = o1.hidden_states[-2][0]
            tensors[f"te2.penultimate.{i}"] = o2.hidden_states[-2][0]
            # diffusers' own conditioning: [77, 64] and the pooled, projected [32].
            embeds, _, pooled, _ = pipe.encode_prompt(p, do_classifier_free_guidance=False)
            tensors[f"embedding.{i}"] = embeds[0]
            tensors[f"pooled.{i}"] = pooled[0]
        g = torch.Generator("cpu").manual_seed(5)
        sample = torch.randn(2, 4, 32, 32, generator=g)
        ehs = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
        text_embeds = torch.randn(2, text_encoder_2.config.projection_dim, generator=g)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [128.0, 96.0, 8.0, 16.0, 64.0, 64.0]])
        t = torch.tensor([981.0, 981.0])
        tensors["unet.sample"] = sample
        tensors["unet.timestep"] = t
        tensors["unet.encoder_hidden_states"] = ehs
        tensors["unet.text_embeds"] = text_embeds
        tensors["unet.time_ids"] = time_ids
        tensors["unet.out"] = unet(
            sample, t, ehs, added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}
        ).sample
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ref, "tensors.safetensors"))

    images = []
    cases = [(slug, steps, IMAGE_NEGATIVE) for slug in SCHEDULERS for steps in (4, 8)]
    # No negative prompt: SDXL's force_zeros_for_empty_prompt conditions the negative half on zeros.
    cases.append(("euler", 4, None))
    for slug, steps, negative in cases:
        cls_name, extra = SCHEDULERS[slug]
        pipe = pipeline(getattr(diffusers, cls_name).from_config(scheduler.config, **extra))
        img = reference_image(pipe, steps, negative)
        name = f"image.{slug}.{steps}" + ("" if negative is not None else ".no-negative") + ".png"
        img.save(os.path.join(ref, name))
        images.append({"file": name, "sampler": slug, "steps": steps, "negative": negative or ""})
    with open(os.path.join(ref, "images.json"), "w") as f:
        json.dump(
            {
                "prompt": IMAGE_PROMPT,
                "seed": IMAGE_SEED,
                "cfg": 7.0,
                "width": 64,
                "height": 64,
                "images": images,
                "made_with": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            },
            f,
            indent=1,
        )


def write_vae_encoder_reference(out, vae):
    """reference/vae_encoder.safetensors: `sample` (two images in [-1, 1], 48x64: not square, not the
    traced size) and diffusers' `vae.encode(sample).latent_dist` `mean` and `logvar`, in fp32.

    diffusers clamps logvar to [-30, 20]; the graph's latent_parameters are before the clamp, so the
    reference asserts the clamp did nothing here.
    """
    from safetensors.torch import save_file

    ref = os.path.join(out, "reference")
    os.makedirs(ref, exist_ok=True)
    g = torch.Generator("cpu").manual_seed(11)
    x = torch.rand(2, vae.config.in_channels, 48, 64, generator=g) * 2 - 1
    vae = vae.float()
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        moments = VaeEncoderWrapper(vae)(x)
    assert torch.equal(moments, torch.cat([dist.mean, dist.logvar], dim=1)), "logvar clamped or moments differ"
    tensors = {"sample": x, "mean": dist.mean, "logvar": dist.logvar}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ref, "vae_encoder.safetensors"))


def tiny_models(family):
    """The tiny fixture's modules exactly as --tiny makes them: (unet, [encoders], vae, scheduler)."""
    import tiny_configs

    torch.manual_seed(0)
    if family == "sdxl":
        unet, te, te2, vae, scheduler = tiny_configs.build_sdxl()
        encoders = [te, te2]
    else:
        unet, te, vae, scheduler = tiny_configs.build_sd15()
        encoders = [te]
    for m in (unet, *encoders, vae):
        round_to_fp16_(m)
    return unet, encoders, vae, scheduler


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

TEMPLATES = {
    "sd15-fp32": ("sd15", "fp32"),
    "sd15-fp16": ("sd15", "fp16"),
    "sdxl-fp32": ("sdxl", "fp32"),
    "sdxl-fp16": ("sdxl", "fp16"),
}
# The example latent size the template graphs are traced at. The graphs do not depend on it (checked:
# byte-identical to the sample_size exports), and it keeps fp16 tracing possible on a CPU (fp16 matmul
# without AVX-512 FP16 runs at ~1 GFLOP/s).
TEMPLATE_LATENT = 8
GZIPPED = ("model.onnx", "weightmap.json", "model.cuda.onnx", "weightmap.cuda.json")


def gzip_file(src, dst):
    """gzip -9 without a name or time in the header: the same input gives the same bytes."""
    import gzip

    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as z:
        z.write(data)


def export_template(name, out, device="cpu", optimize=None):
    """Writes the template NAME to `out`: full-size architecture, random weights, no weights kept.

    Components are built and exported one at a time (SDXL in fp32 is 14 GB of parameters). With
    optimize="cuda" the UNet's weights are kept in a temporary folder for ort_fused, whose fused graph
    and weight map join the template.
    """
    import tiny_configs

    family, dtype_name = TEMPLATES[name]
    dtype = torch.float16 if dtype_name == "fp16" else torch.float32
    lat_example = TEMPLATE_LATENT
    with tempfile.TemporaryDirectory() as tmp:
        components = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
        with torch.no_grad():
            for c in components:
                te = tiny_configs.random_component(family, c, device).to(dtype)
                export_text_encoder(c, te, tmp, None)
                del te
            unet = tiny_configs.random_component(family, "unet", device).to(dtype)
            lat = unet.config.sample_size
            export_unet(unet, tmp, dtype, dtype if optimize else None, lat=lat_example)
            del unet
            vae = tiny_configs.random_component(family, "vae", device)
            export_vae_decoder(vae, lat_example, tmp, dtype, None)
            export_vae_encoder(vae, lat_example * vae_scale_factor(vae), tmp, dtype, None)
        components += ["unet", "vae_decoder", "vae_encoder"]
        write_scheduler(tiny_configs.random_scheduler(family), tmp)
        write_index(tmp, "sdxl" if family == "sdxl" else "sd1", dtype, vae, lat, components,
                    True if family == "sdxl" else None)
        del vae
        if optimize:
            import ort_fused

            ort_fused.optimize_cuda(tmp)
        pack_template(tmp, out, components)


def pack_template(src, out, components):
    """Copies a model folder's graphs (gzipped), weight maps (gzipped) and configs to `out`."""
    if os.path.exists(out):
        shutil.rmtree(out)
    for c in components:
        os.makedirs(os.path.join(out, c))
        for f in GZIPPED:
            if os.path.exists(os.path.join(src, c, f)):
                gzip_file(os.path.join(src, c, f), os.path.join(out, c, f + ".gz"))
        shutil.copy(os.path.join(src, c, "config.json"), os.path.join(out, c, "config.json"))
    os.makedirs(os.path.join(out, "scheduler"))
    shutil.copy(os.path.join(src, "scheduler", "scheduler_config.json"), os.path.join(out, "scheduler"))
    shutil.copy(os.path.join(src, "model_index.json"), out)


def write_clip_template(out):
    """The CLIP BPE vocabulary every template shares: vocab.json.gz, merges.txt.gz."""
    src = os.path.join(ROOT, "tests", "fixtures", "tiny-sd15", "tokenizer")
    os.makedirs(out, exist_ok=True)
    for f in ("vocab.json", "merges.txt"):
        gzip_file(os.path.join(src, f), os.path.join(out, f + ".gz"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="write the tiny test model and its references")
    ap.add_argument("--tiny-sdxl", action="store_true", help="same as --tiny --family sdxl")
    ap.add_argument("--family", choices=["sd1", "sdxl"], default="sd1", help="which tiny model --tiny writes")
    ap.add_argument("--from", dest="src", help="a diffusers SD1.x or SDXL pipeline folder (or hub id in the cache)")
    ap.add_argument("--out", help="output model folder")
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    ap.add_argument("--random", choices=["sd15", "sdxl"], help="full-size architecture with random weights")
    ap.add_argument("--tokenizer", help="tokenizer folder for --random (default: the tiny fixture's)")
    ap.add_argument("--device", default="cpu", help="torch device to build and export on (cuda for --random)")
    ap.add_argument("--optimize", choices=["cuda"], help="also write ONNX Runtime's SD-fused CUDA graph of the UNet")
    ap.add_argument("--model", help="with --optimize or --add: an existing stipple model folder")
    ap.add_argument("--template", choices=sorted(TEMPLATES) + ["clip"],
                    help="write an architecture template (default --out templates/NAME)")
    ap.add_argument("--add", choices=["vae_encoder"], help="add one component to an existing tiny fixture (--model)")
    a = ap.parse_args()
    if a.template:
        out = a.out or os.path.join(ROOT, "templates", a.template)
        if a.template == "clip":
            write_clip_template(out)
        else:
            export_template(a.template, out, a.device, a.optimize)
        import check_template

        check_template.check(out)
        return
    if a.add:
        if not a.model:
            ap.error("--add needs --model DIR")
        add_component(a.model, a.add)
        return
    if a.optimize and a.model and not (a.tiny or a.tiny_sdxl or a.random or a.src):
        import ort_fused

        ort_fused.optimize_cuda(a.model)
        return
    if a.tiny or a.tiny_sdxl:
        sdxl = a.tiny_sdxl or a.family == "sdxl"
        out = a.out or os.path.join(ROOT, "tests", "fixtures", "tiny-sdxl" if sdxl else "tiny-sd15")
        if os.path.exists(out):
            shutil.rmtree(out)
        (tiny_sdxl if sdxl else tiny)(out)
        # The fused graph of the tiny UNet, and hashes of the optimizer's own weights to test against.
        import ort_fused

        ref = os.path.join(out, "reference", "unet_cuda_initializers.json")
        ort_fused.optimize_cuda(out, reference_out=ref)
        print(f"wrote {out}")
    elif a.random and a.out:
        tok = a.tokenizer or os.path.join(ROOT, "tests", "fixtures", "tiny-sd15", "tokenizer")
        random_model(a.random, a.out, a.dtype, tok, a.device)
        if a.optimize:
            import ort_fused

            ort_fused.optimize_cuda(a.out)
        print(f"wrote {a.out}")
    elif a.src and a.out:
        from_diffusers(a.src, a.out, a.dtype)
        if a.optimize:
            import ort_fused

            ort_fused.optimize_cuda(a.out)
        print(f"wrote {a.out}")
    else:
        ap.error("give --tiny [--family sdxl], --random sd15|sdxl --out DIR, --from DIR --out DIR, "
                 "--template NAME, --add vae_encoder --model DIR, or --optimize cuda --model DIR")


if __name__ == "__main__":
    main()
