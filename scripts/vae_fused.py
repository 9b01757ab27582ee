#!/usr/bin/env python3
"""Adds ONNX Runtime's fused CUDA graph of the VAE decoder (`vae_decoder/model.fused.onnx` +
`weightmap.fused.json`) to stipple model folders, tiny fixtures and architecture templates.

    python scripts/vae_fused.py templates/sd15-fp16 models/NAME ...
    python scripts/vae_fused.py --reference tests/fixtures/tiny-sd15 ...   # + the optimizer's hashes
    python scripts/vae_fused.py --check tests/fixtures/tiny-sd15    # + the CPU check (see check())

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
        index = _param_index(params)
        _unfold_reshapes(model, index)
        # Conv biases into the SkipGroupNorms that read the convs (conv_bias_fold's module doc).
        import conv_bias_fold

        conv_bias_fold.fold(model)
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


def _param_index(params):
    """ort_fused's index of the parameters, plus each fp16 view as ORT's float16 conversion writes it where
    that differs from a cast: it clamps magnitudes below 5.96e-8 up to fp16's smallest subnormal (a cast
    gives 0), which fp32 weights (every VAE's) can hold. stipple casts; the difference is that one ulp."""
    import logging

    from onnxruntime.transformers.float16 import convert_np_to_float16

    logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.ERROR)
    index = ort_fused.ParamIndex(params)
    for name, p in params.items():
        for transform, v in ort_fused.views(p):
            v = np.ascontiguousarray(v)
            h = convert_np_to_float16(v)
            if not np.array_equal(h.view(np.uint16), v.astype(np.float16).view(np.uint16)):
                index.table.setdefault(ort_fused._key(h), []).append((name, transform))
    return index


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


def check(folder, lat=16):
    """The fused graph on ONNX Runtime's CPU provider, its contrib operators (CUDA-only kernels) rewritten
    as standard ones computing in fp32 (NhwcConv: Transposes around a Conv; GroupNorm: InstanceNormalization
    over the groups, gamma, beta, SiLU; SkipGroupNorm: the sums first), weights assembled from the recipes
    as stipple does; prints its difference from the plain fp32 graph's output, and the plain fp16 graph's.
    A check of the graph's wiring and recipes, not of ORT's CUDA kernels (scripts/gpu_check.sh is that)."""

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT
    d = f"{folder}/vae_decoder"
    m = onnx.load(f"{d}/model.fused.onnx", load_external_data=False)
    g = m.graph
    new_nodes, extra_inits = [], []
    cnt = [0]
    def nm(base):
        cnt[0] += 1
        return f"dec_{base}_{cnt[0]}"
    def node(op, ins, outs=None, **kw):
        outs = outs or [nm(op)]
        new_nodes.append(helper.make_node(op, ins, outs, **kw))
        return outs[0]
    def const(arr):
        n = nm("c"); extra_inits.append(numpy_helper.from_array(arr, n)); return n
    def to32(x): return node("Cast", [x], to=F32)
    def groupnorm_nhwc(x32, gamma, beta, eps, groups, act, out):
        # x32: NHWC fp32
        x = node("Transpose", [x32], perm=[0, 3, 1, 2])
        shp = node("Shape", [x])
        r = node("Reshape", [x, const(np.array([0, groups, -1], dtype=np.int64))])
        ones = const(np.ones(groups, np.float32)); zeros = const(np.zeros(groups, np.float32))
        nrm = node("InstanceNormalization", [r, ones, zeros], epsilon=eps)
        y = node("Reshape", [nrm, shp])
        gm = node("Reshape", [to32(gamma), const(np.array([-1, 1, 1], dtype=np.int64))])
        bt = node("Reshape", [to32(beta), const(np.array([-1, 1, 1], dtype=np.int64))])
        y = node("Add", [node("Mul", [y, gm]), bt])
        if act == 1:
            y = node("Mul", [y, node("Sigmoid", [y])])
        y = node("Transpose", [y], perm=[0, 2, 3, 1])
        node("Cast", [y], [out], to=F16)
    for n in g.node:
        if n.domain != "com.microsoft":
            new_nodes.append(n); continue
        at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "NhwcConv":
            x = node("Transpose", [to32(n.input[0])], perm=[0, 3, 1, 2])
            w = node("Transpose", [to32(n.input[1])], perm=[0, 3, 1, 2])
            ins = [x, w] + ([to32(n.input[2])] if len(n.input) > 2 and n.input[2] else [])
            y = node("Conv", ins, **at)
            node("Cast", [node("Transpose", [y], perm=[0, 2, 3, 1])], [n.output[0]], to=F16)
        elif n.op_type == "GroupNorm":
            assert at.get("channels_last", 1) == 1
            groupnorm_nhwc(to32(n.input[0]), n.input[1], n.input[2], at["epsilon"], at["groups"], at["activation"], n.output[0])
        elif n.op_type == "SkipGroupNorm":
            s = node("Add", [to32(n.input[0]), to32(n.input[3])])
            if len(n.input) > 4 and n.input[4]:
                s = node("Add", [s, node("Reshape", [to32(n.input[4]), const(np.array([1, 1, 1, -1], dtype=np.int64))])])
            if len(n.output) > 1 and n.output[1]:
                node("Cast", [s], [n.output[1]], to=F16)
            groupnorm_nhwc(s, n.input[1], n.input[2], at["epsilon"], at["groups"], at["activation"], n.output[0])
        else:
            raise SystemExit(f"unknown contrib op {n.op_type}")
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(extra_inits)
    wm = json.loads(vae_fp16._read(f"{d}/weightmap.fused.json")[0])
    from safetensors.numpy import load_file
    src = load_file(f"{d}/weights.safetensors")
    buf = bytearray(max(e["offset"] + e["length"] for e in wm["initializers"]))
    for e in wm["initializers"]:
        a = src[e["source"]].astype(np.float32)
        if e["transform"] == "nhwc": a = a.transpose(0, 2, 3, 1)
        elif e["transform"] == "transpose": a = a.T
        else: assert e["transform"] == "identity"
        a = np.ascontiguousarray(a.astype(np.dtype(e["dtype"]))).reshape(e["shape"])
        buf[e["offset"]:e["offset"] + e["length"]] = a.tobytes()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, lat, lat)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(m, f"{tmp}/model.onnx")
        open(f"{tmp}/weights.bin", "wb").write(bytes(buf))
        s = ort.InferenceSession(f"{tmp}/model.onnx", providers=["CPUExecutionProvider"])
        fused = s.run(None, {"latent_sample": x})[0]
    def run_plain(graph_name, wm_name):
        wm = json.loads(vae_fp16._read(f"{d}/{wm_name}")[0])
        with tempfile.TemporaryDirectory() as tmp:
            open(f"{tmp}/model.onnx", "wb").write(vae_fp16._read(f"{d}/{graph_name}")[0])
            open(f"{tmp}/weights.bin", "wb").write(vae_fp16._weights_bin(d, wm))
            s = ort.InferenceSession(f"{tmp}/model.onnx", providers=["CPUExecutionProvider"])
            return s.run(None, {"latent_sample": x})[0]
    full = run_plain("model.onnx", "weightmap.json")
    half = run_plain("model.cuda.onnx", "weightmap.cuda.json")
    for name, b in (("fused (decomposed)", fused), ("plain fp16", half)):
        dd = np.abs(full.astype(np.float64) - b)
        px = np.abs(np.clip((full + 1) * 127.5, 0, 255) - np.clip((b + 1) * 127.5, 0, 255))
        print(f"{folder} {name} vs fp32: mean abs {dd.mean():.2e} max {dd.max():.2e}; pixels mean {px.mean():.3f}/255 max {px.max():.2f}/255; finite {np.isfinite(b).all()}")


def _ops(model):
    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--reference", action="store_true", help="also write the optimizer's weight hashes")
    ap.add_argument("--check", action="store_true", help="compare with the fp32 graph on the CPU (folders with weights)")
    args = ap.parse_args()
    for folder in args.folders:
        if not os.path.isdir(os.path.join(folder, COMPONENT)):
            sys.exit(f"{folder}: no {COMPONENT} folder")
        fuse(folder, args.reference)
        if args.check:
            check(folder)


if __name__ == "__main__":
    main()
