#!/usr/bin/env python3
"""Writes tests/fixtures/sharded/: how diffusers shards a pipeline folder, recorded small.

    /work/venv/bin/python scripts/shard_fixtures.py        # about a minute on 2 CPU cores

tests/fixtures/single-file/tiny-sd15-diffusers/ is loaded with from_pretrained(variant="fp16") and saved again by
diffusers' own save_pretrained(max_shard_size=SHARD_SIZE), once with variant="fp16" and once without, so that every
component (UNet, VAE, text encoder) is split into two or more shards. The shards themselves are not kept (they are
the folder's weights again, 7 MB): what is kept is each index file diffusers wrote, byte for byte, under
<variant>/<component>/<index name>, and manifest.json with the shard file names diffusers wrote. The Rust test
(tests/it/sharded.rs) splits the unsharded folder's weights by those indexes into files of those names, so the
folder it opens has diffusers' layout exactly.

Verified, failing loudly: each sharded folder loads back with from_pretrained and gives every tensor of the
unsharded folder, bit for bit; each component has at least two shards; the shards together hold exactly the
tensors of the component's index.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

SHARD_SIZE = "1MB"
VARIANTS = {"fp16": "fp16", "plain": None}
COMPONENTS = ("unet", "vae", "text_encoder")


def arg_parser():
    return argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)


if __name__ == "__main__":
    arg_parser().parse_args()  # --help and argument errors come before the heavy imports below

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_log import log  # noqa: E402
from ldm_verify import expect_equal  # noqa: E402
from model_folder import ROOT  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SOURCE = os.path.join(FIXTURES, "single-file", "tiny-sd15-diffusers")
OUT = os.path.join(FIXTURES, "sharded")


def load(folder, variant):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(folder, variant=variant, torch_dtype=torch.float16,
                                                   local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)


def main():
    base = load(SOURCE, "fp16")
    manifest = {"source": "tests/fixtures/single-file/tiny-sd15-diffusers", "max_shard_size": SHARD_SIZE,
                "variants": {}}
    shutil.rmtree(OUT, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, variant in VARIANTS.items():
            dest = os.path.join(tmp, label)
            base.save_pretrained(dest, safe_serialization=True, variant=variant, max_shard_size=SHARD_SIZE)
            back = load(dest, variant)
            entry = {}
            for comp in COMPONENTS:
                d = os.path.join(dest, comp)
                indexes = [f for f in os.listdir(d) if ".index." in f]
                assert len(indexes) == 1, (label, comp, indexes)
                with open(os.path.join(d, indexes[0])) as f:
                    weight_map = json.load(f)["weight_map"]
                shards = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
                assert len(shards) >= 2 and sorted(set(weight_map.values())) == shards, (label, comp, shards)
                held = {}
                for s in shards:
                    with safe_open(os.path.join(d, s), "pt") as f:
                        for k in f.keys():
                            assert k not in held, (label, comp, k)
                            held[k] = s
                assert held == weight_map, (label, comp)
                n = expect_equal(f"{label} {comp}", getattr(back, comp).state_dict(),
                                 getattr(base, comp).state_dict())
                log(f"verify {label}/{comp}: {len(shards)} shards, {n} tensors loaded back by from_pretrained, "
                    "all equal")
                os.makedirs(os.path.join(OUT, label, comp))
                shutil.copy(os.path.join(d, indexes[0]), os.path.join(OUT, label, comp, indexes[0]))
                entry[comp] = {"index": indexes[0], "shards": shards, "tensors": n}
            manifest["variants"][label] = {"variant": variant, "components": entry}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
