#!/usr/bin/env python3
"""Adds ONNX Runtime's SD-fused CUDA graph of the UNet to a stipple model folder (`--optimize cuda`).

    python scripts/export_model.py --optimize cuda --model models/NAME     # an existing folder
    python scripts/export_model.py --random sd15 --dtype fp16 --optimize cuda --out /tmp/sd15

Writes unet/model.cuda.onnx and unet/weightmap.cuda.json beside the plain graph; both graphs share
unet/weights.safetensors. The UNet is rebuilt from unet/config.json and its weights, set to diffusers'
classic attention (ORT's attention fusion does not recognise SDPA), exported in fp32 with constant
folding, run through `onnxruntime.transformers.optimizer.optimize_model(model_type="unet")` with the
options of ORT's own SD pipeline script (packed QKV/KV, NhwcConv, GroupNorm, SkipGroupNorm, BiasAdd,
BiasSplitGelu) and converted to fp16, except the sinusoidal time projections, which stay fp32 as in
diffusers and the plain graphs (scripts/fused_time.py).

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

optimize_cuda_lean is the same for a full-size fp16 UNet that does not fit this route's memory (SDXL:
the fp32 route needs ~30 GB): exported in fp16, the optimizer reading its weights from disk on demand
(`export_model.py --template sdxl-fp16 --optimize cuda --lean`; its docstring has the figures). On an
fp16 graph two fusions pass arrays of another dtype than they declare (GroupNorm's fp32 gamma/beta, the
attention's zero bias); _optimize casts them to the declared type, which the fp32 route never needs.
"""

import contextlib
import hashlib
import json
import os
import shutil
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


def _externalize(model, index, reference=None, base_dir=""):
    """Makes every traced initializer external data in EXTERNAL_FILE; returns the weight-map entries.

    base_dir: where initializers still stored as external data (the lean route's) are read from; one
    that is not traced is embedded in the graph.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    from onnx_export import make_external
    from onnx import numpy_helper

    hints = _heads_hints(model.graph)
    entries, used, offset = [], set(), 0
    untraced = []
    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            if uses_external_data(init):
                load_external_data_for_tensor(init, base_dir)
            continue
        arr = numpy_helper.to_array(init, base_dir)
        found = trace(index, arr, hints.get(init.name, 0))
        if found is None:
            if arr.size >= MIN_TRACED:
                untraced.append(f"{init.name} {list(arr.shape)}")
            elif uses_external_data(init):
                load_external_data_for_tensor(init, base_dir)
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


def _optimize(model):
    """ORT's UNet fusions with the options of its own SD pipeline script for an fp16 UNet on CUDA
    (packed QKV/KV, NhwcConv, GroupNorm, SkipGroupNorm, BiasAdd, BiasSplitGelu), then fp16; returns the
    ModelProto. `model`: a path or a ModelProto."""
    import onnx
    import sys

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # The fusions import their base class as the top-level module `fusion_base` (the package puts
    # its folder on sys.path), a module object other than onnxruntime.transformers.fusion_base.
    Fusion = sys.modules["fusion_base"].Fusion

    opts = FusionOptions("unet")
    opts.enable_packed_kv = True
    opts.enable_packed_qkv = True
    opts.enable_bias_add = True
    add_initializer = Fusion.add_initializer

    def add_float(self, name, data_type, dims, vals, raw=True):
        # On an fp16 graph the fusions' arrays and declared types disagree (onnx refuses the size):
        # GroupNorm declares its gamma/beta fp32 and passes the fp16 weights, the attention fusion
        # declares its zero Q/K/V bias fp16 and passes fp32 zeros. Cast to the declared type: fp16 to
        # fp32 is exact, and the fp16 conversion below narrows fp32 alike. A no-op on fp32 graphs.
        if isinstance(vals, np.ndarray) and data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            vals = vals.astype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
        return add_initializer(self, name, data_type, dims, vals, raw)

    Fusion.add_initializer = add_float
    try:
        m = optimize_model(
            model,
            model_type="unet",
            num_heads=0,
            hidden_size=0,
            opt_level=0,
            optimization_options=opts,
            use_gpu=True,
        )
    finally:
        Fusion.add_initializer = add_initializer
    m.convert_float_to_float16(keep_io_types=False, op_block_list=[])
    # The conversion leaves no fp32 anywhere; the time embedding's `t * freqs` needs it (fused_time).
    import fused_time

    fused_time.keep_fp32(m.model)
    # Conv biases into the SkipGroupNorms that read the convs (conv_bias_fold's module doc).
    import conv_bias_fold

    conv_bias_fold.fold(m.model)
    return m.model


def _op_counts(model):
    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def _write(unet_dir, model, entries, ops):
    import onnx

    onnx.save(model, os.path.join(unet_dir, "model.cuda.onnx"))
    with open(os.path.join(unet_dir, "weightmap.cuda.json"), "w") as f:
        json.dump({"format": 1, "external_file": EXTERNAL_FILE, "initializers": entries}, f, indent=1)
    fused = {k: v for k, v in sorted(ops.items()) if k in FUSED_OPS}
    print(f"{unet_dir}/model.cuda.onnx: {len(model.graph.node)} nodes, fused {fused}, {len(entries)} weights")
    return fused


def optimize_cuda(model_dir, reference_out=None):
    """Writes unet/model.cuda.onnx + unet/weightmap.cuda.json into `model_dir`.

    reference_out: where to save the sha256 of each of the optimizer's own initializers (JSON), for tests.
    """
    import torch
    from onnx_export import onnx_export, unet_export_spec

    unet_dir = os.path.join(model_dir, "unet")
    unet, params = _load_unet(unet_dir)
    wrapper, args, names, axes = unet_export_spec(unet, torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        # Constant folding makes MatMul weights plain initializers, which the attention fusion needs.
        onnx_export(wrapper, args, path, names, axes, fold_constants=True)
        del unet, wrapper
        model = _optimize(path)
        ops = _op_counts(model)
        reference = {} if reference_out else None
        entries = _externalize(model, ParamIndex(params), reference)
        fused = _write(unet_dir, model, entries, ops)
    if reference_out:
        with open(reference_out, "w") as f:
            json.dump(reference, f, indent=1, sort_keys=True)
    return fused


def optimize_cuda_lean(make_unet, unet_dir, lat, config_out=None, work_dir=None):
    """The same fused graph for a full-size fp16 UNet in a fraction of the memory (the template route:
    `export_model.py --template sdxl-fp16 --optimize cuda --lean`). Writes unet_dir/model.cuda.onnx +
    weightmap.cuda.json; returns the fused-op counts.

    make_unet() builds the fp16 UNet with distinct parameter values (tiny_configs.random_component). It is
    hashed for the trace (ParamIndex; its config written to config_out/config.json when given), exported
    in fp16 (classic attention, constant folding) at the example latent `lat` and dropped before the
    optimizer runs. The optimizer then works on a graph whose large fp16 initializers stay in the
    exporter's files on disk: onnx's numpy_helper.to_array reads them on demand without keeping them in
    the graph, so only what the fusions write (packed QKV/KV, NHWC conv weights) is held in memory, and
    _externalize reads the rest one at a time. work_dir: keep the export (model.onnx, its weight files,
    index.pickle) there, and reuse it when it is there already (a rerun of the optimizer alone).

    Measured for SDXL (2.6 B parameters) on 2 CPU cores: see export_model.py's docstring.
    """
    import gc
    import pickle

    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    with contextlib.ExitStack() as stack:
        tmp = work_dir or stack.enter_context(tempfile.TemporaryDirectory())
        os.makedirs(tmp, exist_ok=True)
        path = os.path.join(tmp, "model.onnx")
        saved = os.path.join(tmp, "index.pickle")
        if os.path.exists(saved) and os.path.exists(path):
            with open(saved, "rb") as f:
                index = pickle.load(f)
            print(f"{tmp}: reusing the fp16 export")
        else:
            index = _export_fp16(make_unet, path, lat)
            with open(saved, "wb") as f:
                pickle.dump(index, f)
        if config_out:
            shutil.copy(os.path.join(tmp, "config.json"), os.path.join(config_out, "config.json"))
        gc.collect()
        model = onnx.load(path, load_external_data=False)
        for i, init in enumerate(model.graph.initializer):
            numel = int(np.prod(list(init.dims), dtype=np.int64))
            # Only large fp16 weights stay on disk: the fp16 conversion rewrites fp32 tensors in place
            # (it reads their bytes, not through to_array), and small ones are cheap.
            if init.data_type != onnx.TensorProto.FLOAT16 or numel < MIN_TRACED:
                if uses_external_data(init):
                    load_external_data_for_tensor(init, tmp)
            elif not uses_external_data(init):
                # A graph under 2 GB comes back with its weights embedded: out they go too.
                name = f"lean_{i}.bin"
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(init.raw_data)
                _point_to(init, name, len(init.raw_data))
        # numpy_helper.to_array resolves external locations against the working directory.
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            model = _optimize(model)
            ops = _op_counts(model)
            entries = _externalize(model, index, None, tmp)
        finally:
            os.chdir(cwd)
    os.makedirs(unet_dir, exist_ok=True)
    return _write(unet_dir, model, entries, ops)


def _point_to(init, location, length):
    import onnx

    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    del init.external_data[:]
    for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
        e = init.external_data.add()
        e.key, e.value = k, v


def _export_fp16(make_unet, path, lat):
    """Builds, hashes and exports the fp16 UNet to `path` (its config.json beside it); returns its
    ParamIndex (hashes and names, no arrays)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor
    from onnx_export import onnx_export, unet_export_spec, write_config

    unet = make_unet()
    write_config(unet, os.path.dirname(path))
    unet.set_attn_processor(AttnProcessor())
    params = {k: p.detach().cpu().numpy() for k, p in unet.named_parameters()}
    index = ParamIndex(params)
    index.params = dict.fromkeys(params)  # the names are all _externalize needs
    del params
    wrapper, args, names, axes = unet_export_spec(unet, torch.float16, lat)
    onnx_export(wrapper, args, path, names, axes, fold_constants=True)
    return index


FUSED_OPS = ("MultiHeadAttention", "Attention", "NhwcConv", "GroupNorm", "SkipGroupNorm", "BiasAdd",
             "BiasSplitGelu", "SkipLayerNormalization", "LayerNormalization", "Gelu", "FastGelu")
