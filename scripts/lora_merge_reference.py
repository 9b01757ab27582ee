"""Writes tests/fixtures/lora/kohya_merge.ref.safetensors: what kohya's `svd_merge_lora.py` makes of two
fixture LoRAs, re-implemented here in torch from its algorithm (sd-scripts networks/svd_merge_lora.py
`merge_lora_models`, with the dynamic rank rules of networks/resize_lora.py `rank_resize`).

Per module: M = Σ ratio_k · (alpha_k/dim_k) · up_k @ down_k (3×3 convs flattened), full SVD in float32,
rank by the config's rule, up = U[:, :r]·diag(S[:r]), down = Vh[:r], optional clamp to ±quantile(cat(up, down)).
One deliberate difference: SVD signs are arbitrary and kohya's clamp is not sign-symmetric, so before
clamping each singular pair is flipped to make the largest-magnitude entry of its `down` row positive
(stipple does the same). Stored per config: `{cfg}/{module}` = up@down in ΔW's shape, `{cfg}/{module}.rank`.
Run: /work/venv/bin/python scripts/lora_merge_reference.py
"""

import argparse
import json
import os


def arg_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()  # --help and argument errors come before the heavy imports below

import torch
from safetensors.torch import load_file, save_file

DIR = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "lora")
INPUTS = [("lyco_locon.safetensors", 0.7), ("lyco_locon_f16.safetensors", -0.4)]
MIN_SV = 1e-6
# name: (new_rank, dynamic method, dynamic param, clamp quantile)
CONFIGS = {
    "rank3": (3, None, None, None),
    "rank3_clamp": (3, None, None, 0.99),
    "sv_ratio": (8, "sv_ratio", 3.0, None),
    "sv_fro": (8, "sv_fro", 0.9, None),
    "sv_cumulative": (8, "sv_cumulative", 0.7, None),
}


def merged_weights():
    """kohya merge_lora_models, first half: the summed ΔW per module name, float32."""
    merged = {}
    for name, ratio in INPUTS:
        sd = {k: v.float() for k, v in load_file(os.path.join(DIR, name)).items()}
        for key in sd:
            if "lora_down" not in key:
                continue
            mod = key[: key.rfind(".lora_down")]
            down, up = sd[key], sd[mod + ".lora_up.weight"]
            dim = down.shape[0]
            alpha = sd.get(mod + ".alpha", torch.tensor(float(dim)))
            scale = alpha / dim
            if down.dim() == 4:
                w = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
            else:
                w = up @ down
            merged[mod] = merged.get(mod, 0) + ratio * w * scale
    return merged


def index_clamp(i, n):
    return max(1, min(i, n - 1))


def rank_for(S, new_rank, method, param):
    """resize_lora.rank_resize for dynamic methods, svd_merge_lora's min(new_rank, in, out) otherwise."""
    if method is None:
        return None
    if method == "sv_ratio":
        index = index_clamp(int(torch.sum(S > S[0] / param).item()), len(S))
    elif method == "sv_cumulative":
        cum = torch.cumsum(S, 0) / float(torch.sum(S))
        index = index_clamp(int(torch.searchsorted(cum, param)) + 1, len(S))
    elif method == "sv_fro":
        sq = S.pow(2)
        cum = torch.cumsum(sq, 0) / float(torch.sum(sq))
        index = index_clamp(int(torch.searchsorted(cum, param**2)) + 1, len(S))
    rank = index + 1
    if S[0] <= MIN_SV:
        return 1
    return min(rank, new_rank)


def truncate(mat, new_rank, method, param, q):
    out_dim, in_dim = mat.shape[:2]
    flat = mat.flatten(1) if mat.dim() == 4 else mat
    U, S, Vh = torch.linalg.svd(flat)
    rank = rank_for(S, new_rank, method, param)
    if rank is None:
        rank = min(new_rank, in_dim, out_dim)
    up = U[:, :rank] @ torch.diag(S[:rank])
    down = Vh[:rank]
    if q is not None:
        idx = down.abs().argmax(dim=1)
        sign = torch.sign(down[torch.arange(rank), idx])
        up, down = up * sign, down * sign[:, None]
        hi = torch.quantile(torch.cat([up.flatten(), down.flatten()]), q)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    return (up @ down).reshape(mat.shape), rank


def main():
    merged = merged_weights()
    out = {}
    for cfg, (new_rank, method, param, q) in CONFIGS.items():
        for mod, mat in merged.items():
            rec, rank = truncate(mat, new_rank, method, param, q)
            out[f"{cfg}/{mod}"] = rec.contiguous()
            out[f"{cfg}/{mod}.rank"] = torch.tensor([rank], dtype=torch.int64)
    meta = {
        "inputs": json.dumps(INPUTS),
        "configs": json.dumps({k: dict(rank=r, method=m, param=p, clamp=c) for k, (r, m, p, c) in CONFIGS.items()}),
    }
    save_file(out, os.path.join(DIR, "kohya_merge.ref.safetensors"), meta)
    for cfg in CONFIGS:
        ranks = sorted(int(v) for k, v in out.items() if k.startswith(cfg + "/") and k.endswith(".rank"))
        print(cfg, ranks)


if __name__ == "__main__":
    main()
