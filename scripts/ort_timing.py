"""Timing an ONNX Runtime session run through IO binding, shared by the GPU profiling scripts
(patch_profile.py, unet_profile.py)."""
import time


def timed(sess, io, runs):
    """Mean milliseconds per run after three warm-up runs, each run waited for (its latency, as a
    step or a patch is waited for in stipple)."""
    for _ in range(3):
        sess.run_with_iobinding(io)
    io.synchronize_outputs()
    t = time.perf_counter()
    for _ in range(runs):
        sess.run_with_iobinding(io)
        io.synchronize_outputs()
    return (time.perf_counter() - t) / runs * 1e3
