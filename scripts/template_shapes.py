#!/usr/bin/env python3
"""Writes the shape of every intermediate value into the plain template graphs (GraphProto.value_info), as
ONNX Runtime's own symbolic shape inference derives it from the inputs' symbols (batch, height, width,
sequence): a developer tool, run when templates are made (template_export.pack_template calls write_annotated()).

    python scripts/template_shapes.py                 # every templates/*/*/model.onnx.gz, in place

The test model::template::tests::full_size_plain_graphs_carry_every_values_shape checks that they have them.

Why: with dynamic shapes, ONNX Runtime 1.31's memory planner compares the shapes of every pair of values
it might share a buffer between; without annotations its own inference leaves most of them as fresh unknown
symbols, and that comparison made building the SDXL UNet session take 8.8 s of a 2-core CPU's time (10.8 s
for the same graph in Python's onnxruntime 1.31.1; 0.95 s once annotated; the planner of 1.32.0 does not
have the problem). The annotations change no computation: a value's shape is what it is either way.

Only the plain graphs (model.onnx) are annotated; the fused CUDA graphs (model.cuda.onnx, model.fused.onnx)
hold contrib operators and are left as ONNX Runtime's optimizer wrote them. Weights are external and never
read: for the inference, each external initializer is presented as a graph input of its shape.
"""
import argparse
import glob
import gzip
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def annotate(model):
    """`model` with graph.value_info replaced by the symbolic shape of every intermediate value (in place;
    returns it). Raises when some value's shape stays unknown."""
    import onnx
    from onnx import helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = work.graph
    external = [t for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    names = {t.name for t in external}
    inline = [t for t in g.initializer if t.name not in names]
    del g.initializer[:]
    g.initializer.extend(inline)
    del g.value_info[:]
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external)
    inferred = SymbolicShapeInference.infer_shapes(work, auto_merge=True, guess_output_rank=False)
    if inferred is None:
        raise RuntimeError("symbolic shape inference gave up")
    graph_io = {v.name for v in model.graph.input} | {v.name for v in model.graph.output} | names
    values = [v for v in inferred.graph.value_info if v.name not in graph_io]
    unknown = [v.name for v in values
               if not v.type.tensor_type.HasField("shape")
               or any(not d.dim_param and not d.HasField("dim_value") or d.dim_param.startswith("unk__")
                      for d in v.type.tensor_type.shape.dim)]
    if unknown:
        raise RuntimeError(f"{len(unknown)} values of unknown shape, e.g. {unknown[:3]}")
    del model.graph.value_info[:]
    model.graph.value_info.extend(values)
    return model


def write_annotated(src, dst_gz):
    """Reads the graph `src` (.onnx, or .onnx.gz), annotates it and writes it gzipped to `dst_gz` (may be `src`).
    Returns the number of values annotated."""
    import onnx

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from template_export import gzip_file

    if src.endswith(".gz"):
        with gzip.open(src) as f:
            model = onnx.load_from_string(f.read())
    else:
        model = onnx.load(src, load_external_data=False)
    annotate(model)
    raw = dst_gz[: -len(".gz")] + ".tmp"
    onnx.save(model, raw)
    gzip_file(raw, dst_gz)
    os.remove(raw)
    return len(model.graph.value_info)


def main():
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    for path in sorted(glob.glob(os.path.join(ROOT, "templates", "*", "*", "model.onnx.gz"))):
        n = write_annotated(path, path)
        print(f"{os.path.relpath(path, ROOT)}: {n} values annotated, {os.path.getsize(path)} bytes", flush=True)


if __name__ == "__main__":
    main()
