#!/usr/bin/env python3
"""Checks stipple architecture templates (templates/NAME) and model folders, and prints their sizes.

    python scripts/check_template.py templates/*                  # every template, and templates/clip
    python scripts/check_template.py tests/fixtures/tiny-sd15     # a model folder (plain files) works too
    python scripts/check_template.py --vae-encoder tests/fixtures/tiny-sd15   # + run the graph (onnxruntime)

Per component (model.onnx[.gz], weightmap.json[.gz], and the fused model.cuda.onnx / weightmap.cuda.json
where present): onnx.checker on the graph (no weights exist: every weight is external), every external
initializer has a weight-map entry and every entry an external initializer, with the same dtype, shape,
offset and length (64-aligned, not overlapping, in weights.bin); every weight-map source is a parameter
of the diffusers/transformers model built from the component's config.json (on the meta device) with
that shape, and every such parameter is a source. templates/clip: vocab.json.gz and merges.txt.gz.

--vae-encoder DIR assembles weights.bin of DIR/vae_encoder from its weights.safetensors and weight map,
runs the graph in ONNX Runtime (CPU) on reference/vae_encoder.safetensors and compares with diffusers.

Needs onnx (and torch, diffusers, transformers for the source check; safetensors, onnxruntime for
--vae-encoder). Imports no other script.
"""

import argparse
import gzip
import json
import os
import sys
import tempfile


def arg_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", help="templates or model folders")
    ap.add_argument("--vae-encoder", action="append", default=[], help="also run DIR's vae_encoder graph")
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()  # --help and argument errors come before the heavy imports below

import numpy as np

ALIGN = 64
EXTERNAL_FILE = "weights.bin"


def read(path):
    """The bytes of `path`, or of `path`.gz uncompressed; None when neither exists."""
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    if os.path.exists(path + ".gz"):
        with gzip.open(path + ".gz", "rb") as f:
            return f.read()
    return None


def size(path):
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            return os.path.basename(p), os.path.getsize(p)
    return None


def expected_params(component, comp_dir):
    """{source name: shape} of the parameters the component's graph must read, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    with open(os.path.join(comp_dir, "config.json")) as f:
        cfg = json.load(f)
    with torch.device("meta"):
        if component.startswith("text_encoder"):
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            conf = CLIPTextConfig.from_dict(cfg)
            cls = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
            m = cls(conf)
        elif component == "unet":
            from diffusers import UNet2DConditionModel

            m = UNet2DConditionModel.from_config(cfg)
        else:
            from diffusers import AutoencoderKL

            m = AutoencoderKL.from_config(cfg)
    prefixes = {"vae_decoder": ("decoder.", "post_quant_conv."), "vae_encoder": ("encoder.", "quant_conv.")}
    out = {}
    for name, p in m.named_parameters():
        if component in prefixes and not name.startswith(prefixes[component]):
            continue
        if component.startswith("text_encoder") and not name.startswith(("text_model.", "text_projection.")):
            name = "text_model." + name  # the classic names of released checkpoints
        out[name] = list(p.shape)
    return out


def topo_sort(graph):
    """Sorts graph.node topologically (stable: nodes keep their order where they may); True if it moved any."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    order = []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                order.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise SystemExit(f"graph has a cycle or an input nobody makes: {rest[0].name}")
        pending = rest
    moved = [n.name for n in order] != [n.name for n in graph.node]
    if moved:
        nodes = [type(n)() for n in order]
        for dst, src in zip(nodes, order):
            dst.CopyFrom(src)
        del graph.node[:]
        graph.node.extend(nodes)
    return moved


def check_graph(component, comp_dir, graph_name, map_name, expect):
    import onnx

    data = read(os.path.join(comp_dir, graph_name))
    if data is None:
        return None
    model = onnx.load_model_from_string(data)
    wm = json.loads(read(os.path.join(comp_dir, map_name)))
    # ORT's optimizer uses com.microsoft ops without importing that domain (ORT does not mind); the
    # checker's copy imports it, and skips the schemas of ops outside the ONNX domains.
    domains = {n.domain for n in model.graph.node} - {"", "ai.onnx"}
    note = ""
    for d in sorted(domains - {o.domain for o in model.opset_import}):
        model.opset_import.add(domain=d, version=1)
        note = f" (checker copy imports {', '.join(sorted(domains))})"
    # ...and its fp16 conversion leaves a few Casts after their consumers (ORT sorts at load): so does
    # the checker's copy.
    if topo_sort(model.graph):
        note += " (checker copy sorted topologically)"
    # The checker wants the external file to exist: a sparse one of the right size (no disk used).
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "model.onnx"), "wb") as f:
            f.write(model.SerializeToString())
        with open(os.path.join(tmp, EXTERNAL_FILE), "wb") as f:
            f.truncate(max([e["offset"] + e["length"] for e in wm["initializers"]], default=0))
        onnx.checker.check_model(os.path.join(tmp, "model.onnx"))
    assert wm["external_file"] == EXTERNAL_FILE, wm["external_file"]
    entries = {e["name"]: e for e in wm["initializers"]}
    assert len(entries) == len(wm["initializers"]), "duplicate weight-map names"
    external = {}
    embedded = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            external[init.name] = init
        else:
            embedded += 1
    errors = []
    missing = sorted(set(external) - set(entries))
    extra = sorted(set(entries) - set(external))
    if missing:
        errors.append(f"external initializers without a weight-map entry: {missing[:5]}")
    if extra:
        errors.append(f"weight-map entries without an external initializer: {extra[:5]}")
    spans = []
    dtypes = {}
    for name in sorted(set(external) & set(entries)):
        init, e = external[name], entries[name]
        ext = {kv.key: kv.value for kv in init.external_data}
        dt = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        numel = int(np.prod(list(init.dims), dtype=np.int64))
        if e["dtype"] != dt.name:
            errors.append(f"{name}: dtype {e['dtype']} in the map, {dt.name} in the graph")
        if list(e["shape"]) != list(init.dims):
            errors.append(f"{name}: shape {e['shape']} in the map, {list(init.dims)} in the graph")
        if ext.get("location") != EXTERNAL_FILE:
            errors.append(f"{name}: external location {ext.get('location')}")
        if int(ext.get("offset", -1)) != e["offset"] or int(ext.get("length", -1)) != e["length"]:
            errors.append(f"{name}: offset/length {ext.get('offset')}/{ext.get('length')} in the graph, "
                          f"{e['offset']}/{e['length']} in the map")
        if e["length"] != numel * dt.itemsize:
            errors.append(f"{name}: length {e['length']} for {numel} x {dt.name}")
        if e["offset"] % ALIGN:
            errors.append(f"{name}: offset {e['offset']} not {ALIGN}-aligned")
        spans.append((e["offset"], e["offset"] + e["length"], name))
        dtypes[dt.name] = dtypes.get(dt.name, 0) + 1
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            errors.append(f"{a} and {b} overlap in {EXTERNAL_FILE}")
    if expect is not None:
        used = set()
        for e in entries.values():
            sources = e.get("parts", [e["source"]])
            for s in sources:
                if s not in expect:
                    errors.append(f"{e['name']}: source {s} is no parameter of the model")
            used.update(sources)
            if e["transform"] == "identity" and e["source"] in expect and expect[e["source"]] != list(e["shape"]):
                errors.append(f"{e['name']}: shape {e['shape']}, parameter {e['source']} {expect[e['source']]}")
        unused = sorted(set(expect) - used)
        if unused:
            errors.append(f"parameters no initializer reads: {unused[:5]}")
    if errors:
        raise SystemExit(f"{comp_dir}/{graph_name}: " + "; ".join(errors[:10]))
    total = sum(e["length"] for e in entries.values())
    ops = len(model.graph.node)
    return (f"{graph_name}: checker ok{note}, {ops} nodes, {len(entries)} external initializers = {len(entries)} "
            f"weight-map entries ({', '.join(f'{n} {k}' for k, n in sorted(dtypes.items()))}; "
            f"{total / 1e9:.3f} GB of weights), {embedded} embedded constants"
            + ("" if expect is None else f", sources = the {len(expect)} diffusers parameters"))


def check_clip(path):
    vocab = json.loads(read(os.path.join(path, "vocab.json")))
    merges = read(os.path.join(path, "merges.txt")).decode("utf-8").splitlines()
    assert vocab.get("<|startoftext|>") == 49406 and vocab.get("<|endoftext|>") == 49407, "special tokens"
    assert len(vocab) == 49408, len(vocab)
    print(f"{path}: {len(vocab)} tokens, {len(merges) - 1} merges")


def check(path):
    """Checks one template or model folder; prints what it checked and the sizes; returns the total bytes."""
    if read(os.path.join(path, "vocab.json")) is not None:
        check_clip(path)
    else:
        with open(os.path.join(path, "model_index.json")) as f:
            index = json.load(f)
        print(f"{path}: {index['family']} {index['dtype']}, components {index['components']}")
        for c in index["components"]:
            comp_dir = os.path.join(path, c)
            expect = expected_params(c, comp_dir)
            for graph, wmap in (("model.onnx", "weightmap.json"), ("model.cuda.onnx", "weightmap.cuda.json")):
                line = check_graph(c, comp_dir, graph, wmap, expect)
                if line:
                    print(f"  {c}/{line}")
    total = 0
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = os.path.join(root, f)
            total += os.path.getsize(p)
            if f.endswith(".gz"):
                print(f"  {os.path.relpath(p, path):40s} {os.path.getsize(p):>10,d} B")
    print(f"  total {total:,d} B")
    return total


def verify_vae_encoder(model_dir, tol=1e-4):
    """Runs DIR/vae_encoder/model.onnx (weights.bin assembled from weights.safetensors) on the reference."""
    import onnxruntime as ort
    from safetensors.numpy import load_file

    comp = os.path.join(model_dir, "vae_encoder")
    wm = json.loads(read(os.path.join(comp, "weightmap.json")))
    weights = load_file(os.path.join(comp, "weights.safetensors"))
    ref = load_file(os.path.join(model_dir, "reference", "vae_encoder.safetensors"))
    end = max(e["offset"] + e["length"] for e in wm["initializers"])
    buf = bytearray(end)
    for e in wm["initializers"]:
        assert e["transform"] == "identity"
        a = np.ascontiguousarray(weights[e["source"]].astype(e["dtype"]).reshape(e["shape"]))
        buf[e["offset"]:e["offset"] + e["length"]] = a.tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "model.onnx"), "wb") as f:
            f.write(read(os.path.join(comp, "model.onnx")))
        with open(os.path.join(tmp, EXTERNAL_FILE), "wb") as f:
            f.write(buf)
        sess = ort.InferenceSession(os.path.join(tmp, "model.onnx"), providers=["CPUExecutionProvider"])
        (moments,) = sess.run(None, {"sample": ref["sample"]})
    mean, logvar = np.split(moments, 2, axis=1)
    dm = float(np.abs(mean - ref["mean"]).max())
    dl = float(np.abs(logvar - ref["logvar"]).max())
    print(f"{comp}: input {list(ref['sample'].shape)} -> latent_parameters {list(moments.shape)}; "
          f"max |diff| vs diffusers: mean {dm:.2e}, logvar {dl:.2e}")
    if max(dm, dl) > tol:
        raise SystemExit(f"{comp}: differs from the reference by more than {tol}")


def main(argv=None):
    a = arg_parser().parse_args(argv)
    total = 0
    for p in a.paths:
        total += check(p)
    if len(a.paths) > 1:
        print(f"all: {total:,d} B")
    for d in a.vae_encoder:
        verify_vae_encoder(d)


if __name__ == "__main__":
    sys.exit(main())
