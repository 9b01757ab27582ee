#!/usr/bin/env bash
# Regenerates src/model/onnx_proto/ (split by scripts/split_onnx_proto.py) from onnx.proto with protox + prost-build (pure Rust, no protoc).
# Needs: a Python environment with the `onnx` package (for onnx.proto) as $PYTHON (default python3).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
proto=$("${PYTHON:-python3}" -c 'import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), "onnx.proto"))')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cargo init -q --name protogen
cargo add -q protox@0.10 prost-build@0.14
cp "$proto" onnx.proto
cat > src/main.rs <<'RS'
fn main() {
    let fds = protox::compile(["onnx.proto"], ["."]).expect("onnx.proto compiles");
    prost_build::Config::new().out_dir("out").compile_fds(fds).expect("prost-build");
}
RS
mkdir -p out
cargo run -q
ver=$("${PYTHON:-python3}" -c 'import onnx; print(onnx.__version__)')
rm -rf "$here/src/model/onnx_proto"
"${PYTHON:-python3}" "$here/scripts/split_onnx_proto.py" out/onnx.rs "$ver" "$here/src/model/onnx_proto"
echo "wrote src/model/onnx_proto/"
