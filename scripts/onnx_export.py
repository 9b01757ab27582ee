"""Exports diffusers/transformers modules to stipple's per-component ONNX layout: graph with every
parameter as external data in a `weights.bin` that never exists on disk, weights.safetensors under the
diffusers names, weightmap.json, config.json (see export_model.py's docstring for the layout).

Used by export_model (model folders, templates) and ort_fused (the fused CUDA UNet)."""
import json
import os
import tempfile

import numpy as np
import torch

EXTERNAL_FILE = "weights.bin"
ALIGN = 64


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
    # The text encoder is exported in fp32 whatever the model dtype: transformers' CLIP exported in
    # fp16 feeds fp32 activations to LayerNorms with fp16 weights (onnx.checker and ONNX Runtime refuse
    # the graph). Its weights are still stored in the model dtype; the fp16 graph is converted from this
    # one (te_fp16.py, --te-precision).
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


def vae_scale_factor(vae):
    return 2 ** (len(vae.config.block_out_channels) - 1)
