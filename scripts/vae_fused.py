#!/usr/bin/env python3
"""Adds ONNX Runtime's fused CUDA graph of the VAE decoder (`vae_decoder/model.fused.onnx` +
`weightmap.fused.json`) to stipple model folders, tiny fixtures and architecture templates.

    python scripts/vae_fused.py templates/sd15-fp16 models/NAME ...
    python scripts/vae_fused.py --reference tests/fixtures/tiny-sd15 ...   # + the optimizer's hashes

The decoder is rebuilt from vae_decoder/config.json (with the folder's weights.safetensors where there is
one; a template has none: its parameters are filled with distinct random values, only to trace them),
set to diffusers' classic attention, exported in fp32 with constant folding, run through
`onnxruntime.transformers.optimizer.optimize_model(model_type="vae")` and converted to fp16 with fp32
inputs and outputs (as the plain fp16 graph, model.cuda.onnx, so stipple feeds both alike).

What the optimizer fuses (tiny and full-size alike): every Conv becomes NhwcConv (channels-last), every
GroupNorm+SiLU a GroupNorm or SkipGroupNorm (residual add folded in), all but the mid-block attention's
group norm. Its attention fusion is left off (`enable_attention = False`): ORT 1.32's VAE attention
fusion fails on our export (`int()` of a 1-element shape array) and, where it matches, writes zeros for
the Q/K/V biases (fusion_attention_vae.py, "No bias, use zeros"), which the VAE's attention has; the
mid-block attention stays MatMul/Softmax in fp16.

Weights are traced back to the diffusers parameters by value and written as recipes into the weight map
exactly as scripts/ort_fused.py does for the UNet (identity, transpose, nhwc); a parameter no recipe
reaches or a large initializer not traced back fails the script. With --reference (a folder with weights:
the tiny fixtures), the sha256 of each of the optimizer's own initializers goes to
reference/vae_decoder_fused_initializers.json (tests/it/fused_vae.rs compares stipple's assembly with it).
export_model.py and template_export.py call it for every folder and template they write. The fused contrib operators run on CUDA only; the plain fp16
graph stays for the CPU. Templates hold gzip-compressed files (written as found, like vae_fp16.py).
Needs torch, diffusers, onnx and onnxruntime (the /work/venv ones).
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ort_fused  # noqa: E402
import vae_fp16  # noqa: E402

COMPONENT = "vae_decoder"
REFERENCE = "reference/vae_decoder_fused_initializers.json"


def _load_vae(cdir):
    """The decoder in fp32 and its parameters ({diffusers name: array}), and whether they are random."""
    import torch
    from diffusers import AutoencoderKL
    from diffusers.models.attention_processor import AttnProcessor

    with open(os.path.join(cdir, "config.json")) as f:
        cfg = json.load(f)
    vae = AutoencoderKL.from_config(cfg)
    wpath = os.path.join(cdir, "weights.safetensors")
    random = not os.path.isfile(wpath)
    if random:
        # Distinct values, so that each initializer traces back to one parameter (norms start at 1
        # and 0), none below ORT's fp16 conversion's clamp (|x| < 1e-7 becomes 1e-7, not a cast).
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in vae.parameters():
                r = torch.rand(p.shape, generator=g) * 0.02 + 0.001
                p.copy_(torch.where(torch.rand(p.shape, generator=g) < 0.5, -r, r))
    else:
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(wpath).items()}
        missing = vae.load_state_dict(state, strict=False).missing_keys
        unused = [k for k in missing if k.startswith(("decoder.", "post_quant_conv."))]
        if unused:
            raise SystemExit(f"{wpath}: decoder parameters missing: {unused[:5]}")
    vae.set_attn_processor(AttnProcessor())
    params = {}
    for name, p in vae.named_parameters():
        if name.startswith(("decoder.", "post_quant_conv.")):
            params[name] = p.detach().float().numpy().copy()
    return vae.float().eval(), params, random


def fuse(folder, reference=False):
    """Writes the fused decoder graph + weight map into `folder`; returns the fused operator counts."""
    import onnx
    import torch
    from onnx_export import VaeDecoderWrapper, onnx_export
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cdir = os.path.join(folder, COMPONENT)
    vae, params, random = _load_vae(cdir)
    compressed = not os.path.isfile(os.path.join(cdir, "model.onnx"))
    lat = torch.randn(1, vae.config.latent_channels, 8, 8)
    axes = {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "height", 3: "width"}}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx_export(VaeDecoderWrapper(vae), (lat,), path, (["latent_sample"], ["sample"]), axes, fold_constants=True)
        del vae
        before = _ops(onnx.load(path, load_external_data=False))
        opts = FusionOptions("vae")
        opts.enable_attention = False  # see the module doc
        m = optimize_model(
            path, model_type="vae", num_heads=0, hidden_size=0, opt_level=0, optimization_options=opts, use_gpu=True
        )
        m.convert_float_to_float16(keep_io_types=True, op_block_list=[])
        model = m.model
        after = _ops(model)
        index = ort_fused.ParamIndex(params)
        _unfold_reshapes(model, index)
        if reference and random:
            raise SystemExit(f"{folder}: --reference needs a folder with weights")
        reference = {} if reference else None
        entries = ort_fused._externalize(model, index, reference)
        graph = model.SerializeToString()
    vae_fp16._write(os.path.join(cdir, "model.fused.onnx"), graph, compressed)
    wm = {"format": 1, "external_file": ort_fused.EXTERNAL_FILE, "initializers": entries}
    vae_fp16._write(os.path.join(cdir, "weightmap.fused.json"), (json.dumps(wm, indent=1) + "\n").encode(), compressed)
    if reference is not None:
        os.makedirs(os.path.join(folder, "reference"), exist_ok=True)
        with open(os.path.join(folder, REFERENCE), "w") as f:
            json.dump(reference, f, indent=1, sort_keys=True)
            f.write("\n")
    fused = {k: v for k, v in sorted(after.items()) if k in ort_fused.FUSED_OPS}
    print(f"{cdir}/model.fused.onnx: {sum(before.values())} -> {sum(after.values())} nodes, fused {fused}, "
          f"left {{Conv: {after.get('Conv', 0)}, InstanceNormalization: {after.get('InstanceNormalization', 0)}, "
          f"Softmax: {after.get('Softmax', 0)}}}, {len(entries)} weights")
    return fused


def _unfold_reshapes(model, index):
    """Constant folding stores a 1-D parameter reshaped (the attention group norm's [C] as [C, 1]), a shape
    no recipe makes: such an initializer becomes the parameter itself and a Reshape node (folded again by
    ONNX Runtime when the session is made), so the weight map's identity recipe reaches it."""
    import onnx
    from onnx import helper, numpy_helper

    for init in list(model.graph.initializer):
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) or len(init.dims) < 2:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size != max(arr.shape) or index.lookup(arr):
            continue
        flat = arr.reshape(-1)
        if not index.lookup(flat, "identity"):
            continue
        name = init.name
        model.graph.initializer.remove(init)
        model.graph.initializer.append(numpy_helper.from_array(flat, name + "_param"))
        model.graph.initializer.append(numpy_helper.from_array(np.array(arr.shape, dtype=np.int64), name + "_shape"))
        node = helper.make_node("Reshape", [name + "_param", name + "_shape"], [name], name=name + "_unfold")
        model.graph.node.insert(0, node)


def _ops(model):
    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--reference", action="store_true", help="also write the optimizer's weight hashes")
    args = ap.parse_args()
    for folder in args.folders:
        if not os.path.isdir(os.path.join(folder, COMPONENT)):
            sys.exit(f"{folder}: no {COMPONENT} folder")
        fuse(folder, args.reference)


if __name__ == "__main__":
    main()
