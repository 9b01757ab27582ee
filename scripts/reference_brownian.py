#!/usr/bin/env python3
"""Reference values of the Brownian-tree noise of the DPM++ SDE samplers, for
src/pipeline/schedulers/brownian.rs.

    reference_brownian.py   # writes tests/fixtures/reference/brownian.json

`TreeNoise` below is k-diffusion's `BrownianTreeNoiseSampler` as A1111 calls it (one torchsde 0.2
`BrownianTree` per image, entropy = the image's seed, t0/t1 = the float32 sigma_min/sigma_max, w0 = zeros
of the image's latent shape, float32; each query returns (W(t1) - W(t0)) / sqrt|t1 - t0| with the sign of
the query's direction), re-implemented here from its documented behaviour on top of torchsde itself.
Each query records that noise and the tree's raw increment `w` = W(hi) - W(lo).
The queries run in a shuffled order on one tree and in order on a fresh one: the script checks both give
the same values (torchsde's halfway tree does not depend on query order) before it writes them.
Also records numpy SeedSequence(...).generate_state words for the Rust SeedSequence.

Needs: torch, numpy, torchsde (the /work/venv ones). Run: /work/venv/bin/python scripts/reference_brownian.py
"""
import json
import pathlib
import random

import numpy as np
import torch
import torchsde

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/reference/brownian.json"


class TreeNoise:
    """(W(b) - W(a)) / sqrt|b - a| for queries (a, b), from one image's torchsde BrownianTree."""

    def __init__(self, shape, sigma_min, sigma_max, seed):
        lo, hi = torch.tensor(sigma_min, dtype=torch.float32), torch.tensor(sigma_max, dtype=torch.float32)
        self.flip = 1 if lo < hi else -1
        if self.flip < 0:
            lo, hi = hi, lo
        self.tree = torchsde.BrownianTree(lo, torch.zeros(shape), hi, entropy=seed)

    def __call__(self, sigma, sigma_next):
        a, b = torch.tensor(sigma, dtype=torch.float32), torch.tensor(sigma_next, dtype=torch.float32)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        w = self.tree(lo, hi) * (self.flip * sign)
        return w / (b - a).abs().sqrt()

    def increment(self, sigma, sigma_next):
        """The tree's own W(hi) - W(lo), before sign and scaling."""
        a, b = torch.tensor(sigma, dtype=torch.float32), torch.tensor(sigma_next, dtype=torch.float32)
        return self.tree(min(a, b), max(a, b))


CASES = [
    # (seed, shape, sigma_min, sigma_max, queries)
    (0, (5,), 0.0292, 14.6146, [(14.6146, 9.7), (9.7, 6.1), (6.1, 0.0292)]),
    (1, (4, 2, 2), 0.0292, 14.6146, [(14.6146, 14.6145), (3.3, 2.1), (2.1, 3.3)]),
    (1234567, (4, 4, 4), 0.029167519882321358, 14.614641189575195,
     [(14.614641189575195, 7.49), (7.49, 3.21), (3.21, 1.0), (1.0, 0.2), (0.2, 0.029167519882321358)]),
    (4294967295, (2, 3, 5), 0.1, 1.0, [(1.0, 0.55), (0.55, 0.1), (0.3, 0.7)]),
    (2**40 + 17, (40,), 0.5, 80.0, [(80.0, 20.0), (20.0, 0.5), (33.3, 33.30001)]),
]


def main():
    cases = []
    for seed, shape, smin, smax, queries in CASES:
        fresh = TreeNoise(shape, smin, smax, seed)
        values = [fresh(a, b).flatten().tolist() for a, b in queries]
        raw = [fresh.increment(a, b).flatten().tolist() for a, b in queries]
        shuffled = TreeNoise(shape, smin, smax, seed)
        order = list(range(len(queries)))
        random.Random(seed).shuffle(order)
        again = {i: shuffled(*queries[i]).flatten().tolist() for i in order}
        assert all(again[i] == values[i] for i in range(len(queries))), "query order changed the values"
        cases.append({
            "seed": seed, "n": int(np.prod(shape)), "sigma_min": smin, "sigma_max": smax,
            "queries": [{"sigma": a, "sigma_next": b, "noise": v, "w": w}
                        for (a, b), v, w in zip(queries, values, raw)],
        })
    seed_sequences = []
    for entropy, spawn_key, pool, n in [(0, (), 24, 3), (1234567, (), 24, 3), (1234567, (0, 0), 24, 4),
                                        (1234567, (5, 3), 24, 4), (2**40 + 17, (2**33 + 1, 34), 24, 4),
                                        (99, (), 4, 9), (99, (2**64 + 5,), 4, 6)]:
        words = np.random.SeedSequence(entropy=entropy, spawn_key=spawn_key, pool_size=pool).generate_state(n)
        seed_sequences.append({"entropy": str(entropy), "spawn_key": [str(k) for k in spawn_key],
                               "pool_size": pool, "state": [int(w) for w in words]})
    OUT.write_text(json.dumps({"torchsde": torchsde.__version__, "torch": torch.__version__,
                               "cases": cases, "seed_sequences": seed_sequences}) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
