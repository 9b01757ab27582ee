#!/usr/bin/env python3
"""Adds the fused fp16 graph of each CLIP text encoder (`model.fused.onnx` + `weightmap.fused.json`) to
stipple model folders, tiny fixtures and architecture templates, built from the component's config and
plain weight map (no weights, no torch needed).

    python scripts/te_fused.py templates/sd15-fp16 models/NAME ...
    python scripts/te_fused.py --reference tests/fixtures/tiny-sd15 ...   # + the initializers' hashes
    python scripts/te_fused.py --check tests/fixtures/tiny-sd15           # + fused vs plain on the CPU

Why: the plain graphs are launch-bound on a GPU (SD1.5's 1 x 77 encode is ~360 kernels, 2.1 ms on an
H100 in ONNX Runtime alone, against a GPU busy 1.1 ms of it). This graph is written directly with
ONNX Runtime's contrib operators, about ten per layer:

    x = Gather(token table, ids) + position table          (the 77 rows: the encoder runs 1 x 77)
    per layer: LayerNormalization or SkipLayerNormalization (residual + pending bias + norm, one op)
               Attention(packed QKV weight, packed bias, unidirectional: CLIP's causal mask)
               MatMul out_proj, SkipLayerNormalization, MatMul fc1, QuickGelu(+bias) / BiasGelu, MatMul fc2
    final SkipLayerNormalization; pooled row = a one-hot of the first EOS id times the hidden states
    (a MatMul: no ArgMax over int64 ids, which ONNX Runtime keeps on the CPU)

Outputs keep the plain graph's names and meaning (`last_hidden_state`, `penultimate_hidden_state`: the
residual stream after the next-to-last layer, as transformers' hidden_states[-2]; `pooler_output` or
`text_embeds` through `text_projection`), fp32 out, every weight and activation fp16 inside.

Weight map recipes (stipple's patch step follows them, so adapters reach every weight):
  identity    norms, the token and position tables, the biases but Q/K/V's
  transpose   Linear weights as MatMul takes them, [in, out]
  pack_heads  q_proj, k_proj, v_proj with heads = 1: their transposes side by side, [in, 3*out], the
              layout of the Attention operator's weight input; their biases side by side, [3*out]
              (no in-graph Concat: ONNX Runtime would fold it into a constant, and with resident
              weights an adapter could then not reach those biases)
--reference writes reference/<component>_fused_initializers.json (sha256 of each initializer's bytes as
this script computes them from the folder's weights with numpy), which tests/it/fused_te.rs compares with
stipple's own assembly. Needs onnx, numpy (and onnxruntime, safetensors for --check and --reference).
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vae_fp16  # noqa: E402  (gzip-aware _read/_write, EXTERNAL_FILE, ALIGN)

COMPONENTS = ("text_encoder", "text_encoder_2")
SEQUENCE = 77


class Builder:
    """Nodes, external fp16 initializers and weight-map entries of one graph."""

    def __init__(self, sources):
        self.sources = sources  # {parameter name: shape}
        self.nodes, self.inits, self.entries = [], [], []
        self.offset = 0
        self.count = 0

    def tmp(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def node(self, op, inputs, outputs=None, domain="", **attrs):
        from onnx import helper

        outputs = outputs or [self.tmp(op)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.tmp(op + "_node"), domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def weight(self, name, source, transform="identity", parts=None):
        """An external fp16 initializer made from parameter `source` (or `parts`) by `transform`."""
        import onnx

        shape = list(self.sources[source])
        if transform == "transpose":
            shape = shape[::-1]
        elif transform == "pack_heads":
            shape = [shape[1], shape[0] * len(parts)] if len(shape) == 2 else [shape[0] * len(parts)]
        length = int(np.prod(shape)) * 2
        self.offset = (self.offset + vae_fp16.ALIGN - 1) // vae_fp16.ALIGN * vae_fp16.ALIGN
        t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT16, dims=shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", vae_fp16.EXTERNAL_FILE), ("offset", str(self.offset)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)
        entry = {"name": name, "source": source, "transform": transform, "dtype": "float16", "shape": shape,
                 "offset": self.offset, "length": length}
        if parts:
            entry["parts"], entry["heads"] = parts, 1
        self.entries.append(entry)
        self.offset += length
        return name

    def const(self, name, array):
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name


def _prefix(sources):
    """'text_model.' (or '') before 'embeddings.' in the parameter names."""
    for s in sources:
        if s.endswith("embeddings.token_embedding.weight"):
            return s[: -len("embeddings.token_embedding.weight")]
    raise SystemExit("no token_embedding.weight among the text encoder's parameters")


def build(cfg, plain_entries, outputs):
    """The fused graph (ModelProto) and its weight-map entries for a CLIP text encoder."""
    import onnx
    from onnx import helper

    sources = {e["source"]: (e["shape"] if e["transform"] == "identity" else e["shape"][::-1]) for e in plain_entries}
    pre = _prefix(sources)
    b = Builder(sources)
    d, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    act = cfg["hidden_act"]
    if act not in ("quick_gelu", "gelu"):
        raise SystemExit(f"hidden_act {act!r}: only quick_gelu and gelu are built")
    if cfg.get("eos_token_id") == 2:
        raise SystemExit("a legacy config (eos_token_id 2) pools at the largest id: not built")
    ms = "com.microsoft"
    w = lambda name, t="identity": b.weight("m." + pre + name, pre + name, t)  # noqa: E731

    ids = "input_ids"
    tokens = b.node("Gather", [w("embeddings.token_embedding.weight"), ids], axis=0)
    x = b.node("Add", [tokens, w("embeddings.position_embedding.weight")])
    n = cfg["num_hidden_layers"]
    resid, pending, pending_bias, resid_prev = x, None, None, None
    penultimate = None
    for i in range(n):
        L = f"encoder.layers.{i}."
        if pending is None:
            ln1 = b.node("LayerNormalization", [resid, w(L + "layer_norm1.weight"), w(L + "layer_norm1.bias")],
                         axis=-1, epsilon=eps)
        else:
            ln1, resid = b.tmp("ln1"), b.tmp("resid")
            b.node("SkipLayerNormalization", [pending, resid_prev, w(L + "layer_norm1.weight"),
                                              w(L + "layer_norm1.bias"), pending_bias],
                   [ln1, "", "", resid], domain=ms, epsilon=eps)
            if i == n - 1:
                penultimate = resid
        parts = [pre + L + f"self_attn.{p}_proj.weight" for p in "qkv"]
        qkv = b.weight("m." + pre + L + "self_attn.qkv_proj.weight", parts[0], "pack_heads", parts)
        bparts = [pre + L + f"self_attn.{p}_proj.bias" for p in "qkv"]
        bias = b.weight("m." + pre + L + "self_attn.qkv_proj.bias", bparts[0], "pack_heads", bparts)
        att = b.node("Attention", [ln1, qkv, bias], domain=ms, num_heads=heads, unidirectional=1)
        o = b.node("MatMul", [att, w(L + "self_attn.out_proj.weight", "transpose")])
        ln2, h = b.tmp("ln2"), b.tmp("h")
        b.node("SkipLayerNormalization", [o, resid, w(L + "layer_norm2.weight"), w(L + "layer_norm2.bias"),
                                          w(L + "self_attn.out_proj.bias")], [ln2, "", "", h], domain=ms, epsilon=eps)
        m1 = b.node("MatMul", [ln2, w(L + "mlp.fc1.weight", "transpose")])
        if act == "quick_gelu":
            a = b.node("QuickGelu", [b.node("Add", [m1, w(L + "mlp.fc1.bias")])], domain=ms, alpha=1.702)
        else:
            a = b.node("BiasGelu", [m1, w(L + "mlp.fc1.bias")], domain=ms)
        pending = b.node("MatMul", [a, w(L + "mlp.fc2.weight", "transpose")])
        pending_bias, resid_prev = w(L + "mlp.fc2.bias"), h
    last = b.tmp("last")
    b.node("SkipLayerNormalization", [pending, resid_prev, w("final_layer_norm.weight"), w("final_layer_norm.bias"),
                                      pending_bias], [last, "", "", b.tmp("unused")], domain=ms, epsilon=eps)
    if n == 1:
        raise SystemExit("one layer: no penultimate hidden state")
    # The pooled row: the hidden state at the first EOS id, as a one-hot [B, 1, S] times [B, S, D].
    eos = b.node("Cast", [b.node("Equal", [ids, b.const("eos_id", np.array(cfg["eos_token_id"], np.int64))])],
                 to=onnx.TensorProto.FLOAT16)
    before = b.node("CumSum", [eos, b.const("seq_axis", np.array(1, np.int64))])
    first = b.node("Mul", [eos, b.node("Cast", [b.node("Equal", [before, b.const("one_h", np.array(1.0, np.float16))])],
                                       to=onnx.TensorProto.FLOAT16)])
    row = b.node("MatMul", [b.node("Unsqueeze", [first, b.const("axis_1", np.array([1], np.int64))]), last])
    pooled = b.node("Flatten", [row], axis=1)
    names = {}
    if "text_embeds" in outputs:
        pooled = b.node("MatMul", [pooled, b.weight("m.text_projection.weight", "text_projection.weight", "transpose")])
        names["text_embeds"] = pooled
    else:
        names["pooler_output"] = pooled
    names["last_hidden_state"] = last
    names["penultimate_hidden_state"] = penultimate
    outs = []
    for name in outputs:
        b.node("Cast", [names[name]], [name], to=onnx.TensorProto.FLOAT)
        dims = ["batch", "sequence", d] if name.endswith("hidden_state") else ["batch", d]
        outs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
    # Symbolic like the plain graph's (stipple fixes both when it builds the session); the position
    # table's Add needs 77.
    inp = helper.make_tensor_value_info(ids, onnx.TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph(b.nodes, "clip_text_fused", [inp], outs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)],
                              ir_version=8, producer_name="stipple te_fused.py")
    return model, b.entries


def _component(cdir):
    cfg = json.loads(vae_fp16._read(os.path.join(cdir, "config.json"))[0])
    wm = json.loads(vae_fp16._read(os.path.join(cdir, "weightmap.json"))[0])
    import onnx

    plain = onnx.load_from_string(vae_fp16._read(os.path.join(cdir, "model.onnx"))[0])
    outputs = [o.name for o in plain.graph.output]
    return cfg, wm, outputs


def add_to(folder, reference=False):
    """Writes model.fused.onnx + weightmap.fused.json into each text encoder of `folder`."""
    for comp in COMPONENTS:
        cdir = os.path.join(folder, comp)
        if not os.path.isdir(cdir):
            continue
        cfg, wm, outputs = _component(cdir)
        model, entries = build(cfg, wm["initializers"], outputs)
        compressed = not os.path.isfile(os.path.join(cdir, "model.onnx"))
        vae_fp16._write(os.path.join(cdir, "model.fused.onnx"), model.SerializeToString(), compressed)
        fused_wm = {"format": 1, "external_file": vae_fp16.EXTERNAL_FILE, "initializers": entries}
        vae_fp16._write(os.path.join(cdir, "weightmap.fused.json"), (json.dumps(fused_wm, indent=1) + "\n").encode(),
                        compressed)
        print(f"{cdir}/model.fused.onnx: {len(model.graph.node)} nodes (plain: "
              f"{len(onnx_nodes(cdir))}), {len(entries)} weights")
        if reference:
            _write_reference(folder, comp, entries)


def onnx_nodes(cdir):
    import onnx

    return onnx.load_from_string(vae_fp16._read(os.path.join(cdir, "model.onnx"))[0]).graph.node


def _params(cdir):
    from safetensors.numpy import load_file

    return load_file(os.path.join(cdir, "weights.safetensors"))


def _value(params, e):
    """Initializer `e` computed from the parameters with numpy, fp16."""
    if e["transform"] == "pack_heads":
        v = np.concatenate([params[p].astype(np.float32).T for p in e["parts"]], axis=-1)
    elif e["transform"] == "transpose":
        v = params[e["source"]].astype(np.float32).T
    else:
        v = params[e["source"]].astype(np.float32)
    return np.ascontiguousarray(v.astype(np.float16))


def _write_reference(folder, comp, entries):
    params = _params(os.path.join(folder, comp))
    ref = {}
    for e in entries:
        v = _value(params, e)
        ref[e["name"]] = {"sha256": hashlib.sha256(v.tobytes()).hexdigest(), "dtype": "float16", "shape": list(v.shape)}
    os.makedirs(os.path.join(folder, "reference"), exist_ok=True)
    with open(os.path.join(folder, "reference", f"{comp}_fused_initializers.json"), "w") as f:
        json.dump(ref, f, indent=1, sort_keys=True)
        f.write("\n")


def _session(cdir, graph_file, wm_file):
    """An ONNX Runtime CPU session of a graph with its external data assembled from the weights."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    params = _params(cdir)
    model = onnx.load_from_string(vae_fp16._read(os.path.join(cdir, graph_file))[0])
    entries = {e["name"]: e for e in json.loads(vae_fp16._read(os.path.join(cdir, wm_file))[0])["initializers"]}
    for init in model.graph.initializer:
        e = entries.get(init.name)
        if e is None:
            continue
        v = _value(params, e) if e["dtype"] == "float16" else params[e["source"]].astype(e["dtype"])
        if e["transform"] == "transpose" and e["dtype"] != "float16":
            v = np.ascontiguousarray(params[e["source"]].astype(e["dtype"]).T)
        init.CopyFrom(numpy_helper.from_array(v.reshape(e["shape"]), init.name))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def check(folder):
    """Fused fp16 against the plain graph (fp32) on ONNX Runtime's CPU provider, each output."""
    worst = 0.0
    for comp in COMPONENTS:
        cdir = os.path.join(folder, comp)
        if not os.path.isdir(cdir):
            continue
        fused = _session(cdir, "model.fused.onnx", "weightmap.fused.json")
        plain = _session(cdir, "model.onnx", "weightmap.json")
        rng = np.random.default_rng(0)
        ids = np.full((1, SEQUENCE), 49407, np.int64)
        ids[0, 0] = 49406
        ids[0, 1:12] = rng.integers(300, 40000, 11)
        names = [o.name for o in plain.get_outputs()]
        a = dict(zip(names, plain.run(None, {"input_ids": ids})))
        b = dict(zip([o.name for o in fused.get_outputs()], fused.run(None, {"input_ids": ids})))
        for name in names:
            diff = np.abs(a[name] - b[name])
            scale = np.abs(a[name]).max()
            print(f"{cdir} {name}: max abs {diff.max():.5f}, mean {diff.mean():.6f} (values up to {scale:.2f})")
            worst = max(worst, float(diff.max() / max(scale, 1e-6)))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--reference", action="store_true", help="also write the initializers' hashes")
    ap.add_argument("--check", action="store_true", help="also compare with the plain graph on the CPU")
    a = ap.parse_args()
    for folder in a.folders:
        add_to(folder, a.reference)
        if a.check:
            worst = check(folder)
            if worst > 1e-2:
                raise SystemExit(f"{folder}: the fused graph strays from the plain one ({worst:.4f} of the range)")


if __name__ == "__main__":
    main()
