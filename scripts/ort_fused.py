#!/usr/bin/env python3
"""Adds ONNX Runtime's SD-fused CUDA graph of the UNet to a stipple model folder (`--optimize cuda`).

    python scripts/export_model.py --optimize cuda --model models/NAME     # an existing folder
    python scripts/export_model.py --random sd15 --dtype fp16 --optimize cuda --out /tmp/sd15

Writes unet/model.cuda.onnx and unet/weightmap.cuda.json beside the plain graph; both graphs share
unet/weights.safetensors. The UNet is rebuilt from unet/config.json and its weights, set to diffusers'
classic attention (ORT's attention fusion does not recognise SDPA), exported in fp32 with constant
folding, run through `onnxruntime.transformers.optimizer.optimize_model(model_type="unet")` with the
options of ORT's own SD pipeline script (packed QKV/KV, NhwcConv, GroupNorm, SkipGroupNorm, BiasAdd,
BiasSplitGelu) and converted to fp16.

The optimizer renames and repacks weights. Every initializer of the result is then traced back to the
diffusers parameters by value, and the recipe is written to the weight map, so stipple can patch
adapters into this graph before session creation:
  identity    the parameter as it is (fp16 or fp32)
  transpose   a Linear weight as MatMul takes it, [in, out]
  nhwc        a Conv weight permuted to [out, kh, kw, in] (NhwcConv)
  pack_heads  Q, K, V (or K, V) weights, each [in, heads*dim] after transposing, interleaved per head:
              column (n*k + i)*dim + d of the packed [in, heads*k*dim] is column n*dim + d of part i
A parameter that no recipe reaches, or a large initializer that is not traced back, fails the export:
an adapter must never be silently left out of the fused graph.
"""

import hashlib
import json
import os
import tempfile

import numpy as np

EXTERNAL_FILE = "weights.bin"
# Float initializers at least this large must be traced back to parameters (constants are smaller).
MIN_TRACED = 1024


def _key(arr):
    a = np.ascontiguousarray(arr)
    return (a.dtype.str, a.shape, hashlib.sha1(a.tobytes()).hexdigest())


def views(p):
    """The layouts a graph may hold parameter `p` in, as (recipe, array): as it is, transposed (a Linear
    weight as MatMul takes it), NHWC (a Conv weight for NhwcConv)."""
    out = [("identity", p)]
    if p.ndim == 2:
        out.append(("transpose", p.T))
    if p.ndim == 4:
        out.append(("nhwc", p.transpose(0, 2, 3, 1)))
    return out


class ParamIndex:
    """Hashes of every parameter in each layout and dtype an optimized graph may hold it in."""

    def __init__(self, params):
        self.params = params
        self.table = {}
        for name, p in params.items():
            for transform, v in views(p):
                for dt in (np.float16, np.float32):
                    k = _key(v.astype(dt))
                    self.table.setdefault(k, []).append((name, transform))

    def lookup(self, arr, transform=None):
        hits = self.table.get(_key(arr), [])
        if transform is not None:
            hits = [h for h in hits if h[1] == transform]
        return hits


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def trace(index, arr, heads_hint):
    """Returns (transform, sources, heads) for an initializer, or None."""
    hits = index.lookup(arr)
    if len(hits) > 1:
        names = sorted({h[0] for h in hits})
        if len(names) > 1:
            raise SystemExit(f"ambiguous initializer: equal to {names} (parameters with equal values)")
    if hits:
        name, transform = hits[0]
        return transform, [name], 0
    if arr.ndim != 2:
        return None
    c, m = arr.shape
    for k in (3, 2):
        if m % k:
            continue
        candidates = [heads_hint] if heads_hint else []
        candidates += [n for n in _divisors(m // k) if n != heads_hint]
        for n in candidates:
            h = m // k // n
            view = arr.reshape(c, n, k, h)
            parts = []
            for i in range(k):
                hit = index.lookup(view[:, :, i, :].reshape(c, n * h), "transpose")
                if len(hit) != 1:
                    break
                parts.append(hit[0][0])
            if len(parts) == k:
                return "pack_heads", parts, n
    return None


def _heads_hints(graph):
    """Packed MatMul weight name -> num_heads of the MultiHeadAttention it feeds (through a Reshape)."""
    by_output = {}
    for node in graph.node:
        for o in node.output:
            by_output[o] = node
    heads = {}
    consumers = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    for node in graph.node:
        if node.op_type != "MultiHeadAttention":
            continue
        n = next((a.i for a in node.attribute if a.name == "num_heads"), 0)
        for inp in node.input:
            src = by_output.get(inp)
            while src is not None and src.op_type in ("Reshape", "Cast"):
                src = by_output.get(src.input[0])
            if src is not None and src.op_type == "MatMul":
                heads[src.input[1]] = n
    return heads


def _externalize(model, index, reference=None):
    import onnx
    from onnx_export import make_external
    from onnx import numpy_helper

    hints = _heads_hints(model.graph)
    entries, used, offset = [], set(), 0
    untraced = []
    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        arr = numpy_helper.to_array(init)
        found = trace(index, arr, hints.get(init.name, 0))
        if found is None:
            if arr.size >= MIN_TRACED:
                untraced.append(f"{init.name} {list(arr.shape)}")
            continue
        transform, sources, heads = found
        data = np.ascontiguousarray(arr).tobytes()
        if reference is not None:
            reference[init.name] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "dtype": arr.dtype.name,
                "shape": list(arr.shape),
            }
        offset = make_external(init, offset, len(data))
        entry = {
            "name": init.name,
            "source": sources[0],
            "transform": transform,
            "dtype": arr.dtype.name,
            "shape": list(arr.shape),
            "offset": offset,
            "length": len(data),
        }
        if transform == "pack_heads":
            entry["parts"] = sources
            entry["heads"] = heads
        entries.append(entry)
        used.update(sources)
        offset += len(data)
    if untraced:
        raise SystemExit("initializers not traced back to parameters: " + ", ".join(untraced[:10]))
    missing = sorted(set(index.params) - used)
    if missing:
        raise SystemExit(f"parameters the fused graph does not reach: {', '.join(missing[:10])}")
    return entries


def _load_unet(unet_dir):
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from safetensors.torch import load_file

    with open(os.path.join(unet_dir, "config.json")) as f:
        cfg = json.load(f)
    unet = UNet2DConditionModel.from_config(cfg)
    state = {k: v.float() for k, v in load_file(os.path.join(unet_dir, "weights.safetensors")).items()}
    unet.load_state_dict(state, strict=True)
    unet.set_attn_processor(AttnProcessor())
    params = {k: v.numpy() for k, v in state.items()}
    # Tracing is much faster on a GPU; the exported graph is the same.
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return unet.float().eval().to(dev), params


def optimize_cuda(model_dir, reference_out=None):
    """Writes unet/model.cuda.onnx + unet/weightmap.cuda.json into `model_dir`.

    reference_out: where to save the sha256 of each of the optimizer's own initializers (JSON), for tests.
    """
    import onnx
    import torch
    from onnx_export import onnx_export, unet_export_spec
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    unet_dir = os.path.join(model_dir, "unet")
    unet, params = _load_unet(unet_dir)
    wrapper, args, names, axes = unet_export_spec(unet, torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        # Constant folding makes MatMul weights plain initializers, which the attention fusion needs.
        onnx_export(wrapper, args, path, names, axes, fold_constants=True)
        del unet, wrapper
        opts = FusionOptions("unet")
        # What ORT's SD pipeline script sets for an fp16 UNet on CUDA.
        opts.enable_packed_kv = True
        opts.enable_packed_qkv = True
        opts.enable_bias_add = True
        m = optimize_model(
            path,
            model_type="unet",
            num_heads=0,
            hidden_size=0,
            opt_level=0,
            optimization_options=opts,
            use_gpu=True,
        )
        m.convert_float_to_float16(keep_io_types=False, op_block_list=[])
        model = m.model
        ops = {}
        for n in model.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        reference = {} if reference_out else None
        entries = _externalize(model, ParamIndex(params), reference)
        onnx.save(model, os.path.join(unet_dir, "model.cuda.onnx"))
    with open(os.path.join(unet_dir, "weightmap.cuda.json"), "w") as f:
        json.dump({"format": 1, "external_file": EXTERNAL_FILE, "initializers": entries}, f, indent=1)
    if reference_out:
        with open(reference_out, "w") as f:
            json.dump(reference, f, indent=1, sort_keys=True)
    fused = {k: v for k, v in sorted(ops.items()) if k in FUSED_OPS}
    print(f"{unet_dir}/model.cuda.onnx: {len(model.graph.node)} nodes, fused {fused}, {len(entries)} weights")
    return fused


FUSED_OPS = ("MultiHeadAttention", "Attention", "NhwcConv", "GroupNorm", "SkipGroupNorm", "BiasAdd",
             "BiasSplitGelu", "SkipLayerNormalization", "LayerNormalization", "Gelu", "FastGelu")
