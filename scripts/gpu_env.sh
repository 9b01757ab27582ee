# Sourced by scripts/gpu_bench.sh and scripts/gpu_check.sh on the GPU machine: unpacks ONNX Runtime GPU
# (parts in /tmp/parts) once, points stipple at it and at the machine's CUDA libraries, and makes the
# diffusers wheels in .whl/ importable when the machine lacks diffusers.
NV=${NV:-/opt/torch/.venv/lib/python3.12/site-packages/nvidia}
if [ ! -f /tmp/ort/onnxruntime/capi/libonnxruntime.so.1.31.1 ]; then
  mkdir -p /tmp/ort && cat /tmp/parts/part* | xz -d | tar x -C /tmp/ort
fi
export ORT_DYLIB_PATH=/tmp/ort/onnxruntime/capi/libonnxruntime.so.1.31.1
# stipple finds and preloads the CUDA libraries itself; this only says where this machine keeps them.
export STIPPLE_CUDA_LIBS=$NV/cu13/lib:$NV/cudnn/lib:/usr/local/cuda-13.0/lib64
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
