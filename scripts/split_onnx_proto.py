#!/usr/bin/env python3
"""Splits prost's generated onnx.rs into src/model/onnx_proto/ by what each part holds (so no file
passes 800 lines): tensor.rs (tensors, shapes, types), version.rs (the IR version enums), graph.rs
(everything else: models, graphs, nodes, attributes, functions) and mod.rs (re-exports). Standard library only.

    python3 scripts/split_onnx_proto.py GENERATED.rs ONNX_VERSION OUT_DIR
"""
import os
import re
import sys

PART_OF = {name: "tensor" for name in ("TensorProto", "tensor_proto", "SparseTensorProto", "TensorShapeProto",
                                        "tensor_shape_proto", "TypeProto", "type_proto")}
PART_OF.update(Version="version", OperatorStatus="version")
PARTS = {
    "graph": "models, graphs, nodes, attributes, functions and training info",
    "tensor": "tensors (dense and sparse), shapes and value types",
    "version": "the IR version and operator status enums",
}


def items(text):
    """Top-level items, each with its doc comments and attributes: (name, text)."""
    out, cur = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith("// This file is @generated"):
            continue
        cur.append(line)
        if line.rstrip("\n") == "}":
            body = "".join(cur)
            m = re.search(r"^(?:pub (?:struct|enum|mod)|impl) (\w+)", body, re.M)
            out.append((m.group(1) if m else "", body))
            cur = []
    assert not "".join(cur).strip(), "text after the last item"
    return out


def main(argv):
    src, version, out_dir = argv
    with open(src) as f:
        parts = {part: [] for part in PARTS}
        for name, body in items(f.read()):
            parts[PART_OF.get(name, "graph")].append(body)
    os.makedirs(out_dir, exist_ok=True)
    for part, bodies in parts.items():
        with open(os.path.join(out_dir, f"{part}.rs"), "w") as f:
            f.write(f"//! Generated ONNX protobuf types (prost): {PARTS[part]}.\n")
            f.write("//! Regenerate with `scripts/gen_onnx_proto.sh`; never edit by hand.\n\n")
            f.write("#![allow(clippy::all, missing_docs, rustdoc::all, unused_imports)]\n\n")
            f.write("use super::*;\n\n")
            f.write("".join(bodies))
    with open(os.path.join(out_dir, "mod.rs"), "w") as f:
        f.write(f"//! Generated ONNX protobuf types (prost), from onnx.proto of the `onnx` Python package {version},\n")
        f.write("//! in parts: [`graph`] (models, graphs, nodes, attributes, functions), [`tensor`] (tensors,\n")
        f.write("//! shapes, types) and [`version`] (IR version enums), all re-exported here.\n")
        f.write("//!\n//! Regenerate with `scripts/gen_onnx_proto.sh`; never edit by hand.\n\n")
        f.write("".join(f"pub mod {part};\n" for part in PARTS) + "\n")
        f.write("".join(f"pub use {part}::*;\n" for part in PARTS))


if __name__ == "__main__":
    main(sys.argv[1:])
