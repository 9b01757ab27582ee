#!/usr/bin/env python3
"""Adds the fp16 graph of each VAE component (`model.cuda.onnx` + `weightmap.cuda.json`) to stipple
model folders and architecture templates, made from the fp32 graph already there (no weights needed).
The conversion is shared: te_fp16.py does the same for the text encoders (`add_to(folder, components)`).

    python scripts/vae_fp16.py templates/sd15-fp16 tests/fixtures/tiny-sd15 ...
    python scripts/vae_fp16.py --check tests/fixtures/tiny-sd15    # also compares fp16 with fp32 in ORT

The graph is ONNX Runtime's float16 conversion of the fp32 graph with its inputs and outputs kept fp32
(`keep_io_types`): Casts at the edges, every weight and activation fp16 inside, the inputs ONNX fixes as
float (Resize scales) left fp32. Only standard ONNX operators, so it runs on every execution provider;
stipple uses it on CUDA (`--vae-precision`). Weights keep their names and sources: the weight map is the
fp32 one with each entry's dtype, offset and length redone for the converted initializers, so a
checkpoint's VAE fills it as it fills the fp32 graph (converted once, at assembly).

Folders of templates (`templates/*`) hold gzip-compressed files; both forms are read and written as found.
Needs onnx and onnxruntime (the /work/venv ones).
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np

EXTERNAL_FILE = "weights.bin"
ALIGN = 64
COMPONENTS = ("vae_decoder", "vae_encoder")


def _read(path):
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read(), False
    with gzip.open(path + ".gz", "rb") as f:
        return f.read(), True


def _write(path, data, compressed):
    if compressed:
        # mtime 0: the same graph gives the same bytes (the files are committed).
        with open(path + ".gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def _external_fields(init):
    return {e.key: e.value for e in init.external_data}


def convert(model_bytes, weightmap, op_block_list=None):
    """The fp16 graph bytes and its weight map, from the fp32 graph bytes and weight map.

    `op_block_list`: operator types left in fp32 (None: the converter's default list)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load_from_string(model_bytes)
    # Shapes and types are inferred before the placeholder weights go in: the converter's own
    # inference serializes the model, which cannot pass 2 GB (SDXL's OpenCLIP-bigG in fp32).
    model = onnx.shape_inference.infer_shapes(model)
    entries = {e["name"]: e for e in weightmap["initializers"]}
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if init.name not in entries:
            raise SystemExit(f"external initializer {init.name} is not in the weight map")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        # Placeholder values: the converter needs data to convert; stipple fills the weights itself.
        init.raw_data = np.zeros(tuple(init.dims), dtype=dtype).tobytes()
        init.data_location = onnx.TensorProto.DEFAULT
        del init.external_data[:]
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True, op_block_list=op_block_list)
    out_entries, offset = [], 0
    by_name = {i.name: i for i in half.graph.initializer}
    for e in weightmap["initializers"]:
        init = by_name.get(e["name"])
        if init is None:
            raise SystemExit(f"the conversion dropped initializer {e['name']}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        length = int(np.prod(init.dims, dtype=np.int64)) * np.dtype(dtype).itemsize
        offset = (offset + ALIGN - 1) // ALIGN * ALIGN
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", EXTERNAL_FILE), ("offset", str(offset)), ("length", str(length))):
            x = init.external_data.add()
            x.key, x.value = k, v
        entry = dict(e)
        entry.update({"dtype": np.dtype(dtype).name, "offset": offset, "length": length})
        out_entries.append(entry)
        offset += length
    wm = dict(weightmap)
    wm["initializers"] = out_entries
    return half.SerializeToString(), wm


def add_to(folder, components=COMPONENTS, op_block_list=None):
    """Writes the fp16 graph and weight map of each of `components` that `folder` has; returns them."""
    done = []
    for comp in components:
        cdir = os.path.join(folder, comp)
        if not os.path.isdir(cdir):
            continue
        graph, gz = _read(os.path.join(cdir, "model.onnx"))
        wm_bytes, wm_gz = _read(os.path.join(cdir, "weightmap.json"))
        half, wm = convert(graph, json.loads(wm_bytes), op_block_list)
        _write(os.path.join(cdir, "model.cuda.onnx"), half, gz)
        _write(os.path.join(cdir, "weightmap.cuda.json"), (json.dumps(wm, indent=1) + "\n").encode(), wm_gz)
        done.append(comp)
    return done


def _weights_bin(cdir, wm):
    """The external-data file of a graph, filled from the folder's weights.safetensors."""
    from safetensors.numpy import load_file

    src = load_file(os.path.join(cdir, "weights.safetensors"))
    size = max(e["offset"] + e["length"] for e in wm["initializers"])
    buf = bytearray(size)
    for e in wm["initializers"]:
        assert e["transform"] == "identity", e
        a = src[e["source"]].astype(np.dtype(e["dtype"])).reshape(e["shape"])
        buf[e["offset"]:e["offset"] + e["length"]] = a.tobytes()
    return bytes(buf)


def _vae_feeds(comp, rng):
    shape = [1, 4, 8, 8] if comp == "vae_decoder" else [1, 3, 64, 64]
    name = "latent_sample" if comp == "vae_decoder" else "sample"
    return {name: rng.standard_normal(shape).astype(np.float32)}


def run_both(cdir, feeds):
    """The outputs of a component's fp32 and fp16 graphs on `feeds` (ONNX Runtime's CPU provider,
    weights from the folder's weights.safetensors): ({name: fp32 output}, {name: fp16 output})."""
    import tempfile

    import onnx
    import onnxruntime as ort

    outs = []
    for graph_name, wm_name in (("model.onnx", "weightmap.json"), ("model.cuda.onnx", "weightmap.cuda.json")):
        graph, _ = _read(os.path.join(cdir, graph_name))
        wm = json.loads(_read(os.path.join(cdir, wm_name))[0])
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "model.onnx"), "wb") as f:
                f.write(graph)
            with open(os.path.join(tmp, EXTERNAL_FILE), "wb") as f:
                f.write(_weights_bin(cdir, wm))
            onnx.checker.check_model(os.path.join(tmp, "model.onnx"), full_check=True)
            s = ort.InferenceSession(os.path.join(tmp, "model.onnx"), providers=["CPUExecutionProvider"])
            names = [o.name for o in s.get_outputs()]
            outs.append(dict(zip(names, s.run(None, feeds))))
    return outs[0], outs[1]


def check(folder, components=COMPONENTS, feeds=_vae_feeds):
    """Runs each graph of `components` in fp32 and fp16 on ONNX Runtime's CPU provider (after
    onnx.checker); prints the difference of every output. `feeds(component, rng)`: the inputs."""
    rng = np.random.default_rng(0)
    for comp in components:
        cdir = os.path.join(folder, comp)
        if not os.path.isdir(cdir):
            continue
        full, half = run_both(cdir, feeds(comp, rng))
        for name, a in full.items():
            b = half[name]
            assert b.dtype == np.float32 and np.isfinite(b).all(), (cdir, name)
            d = np.abs(a.astype(np.float64) - b)
            print(f"{cdir} {name}: fp16 vs fp32 mean abs {d.mean():.2e}, max {d.max():.2e} "
                  f"(output range {np.abs(a).max():.2f})")


def cli(description, add, compare, missing):
    """The command line both scripts share: `add` the fp16 graphs to each folder, `compare` with --check."""
    ap = argparse.ArgumentParser(description=description.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--check", action="store_true", help="compare fp16 with fp32 (folders with weights)")
    args = ap.parse_args()
    for folder in args.folders:
        done = add(folder)
        if not done:
            sys.exit(f"{folder}: no {missing} folder")
        print(f"{folder}: fp16 graphs for {', '.join(done)}")
        if args.check:
            compare(folder)


def main():
    cli(__doc__, add_to, check, "vae_decoder or vae_encoder")


if __name__ == "__main__":
    main()
