"""Writes the seed corpora of the cargo fuzz targets, fuzz/corpus/<target>/seed-*: the smallest adapter
fixtures of tests/fixtures/lora/ (good and bad), PNGs with `parameters` and `stipple` chunks in every text
chunk kind (tEXt, zTXt, iTXt, as A1111/PIL and stipple write them), prompts using every rule of the
prompt language, and job lines with every field, a sweep and the README's examples.
Run: /work/venv/bin/python scripts/fuzz_seeds.py   (tests/it/fuzz_corpus.rs runs every corpus file)
"""

import argparse
import os
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")

ADAPTERS = [
    "bad_header_past_end",
    "bad_overlap",
    "bad_truncated",
    "lyco_ia3_input",
    "lenient_meta_nan",
    "lyco_lokr_tucker",
    "lyco_norm",
    "lyco_locon_bf16",
    "lyco_lokr",
    "lyco_oft",
]

PROMPTS = [
    "a red fox in snow",
    "a (red:1.3) fox, [snow], ((detailed)) \\(literal\\) BREAK second chunk",
    "<lora:ink_style:0.8> a fox",
    "a fox <lora:x:te=0.5:unet=1.5:dyn=4> <lyco:t:-1>",
    "<lora:y:te=0.1@1,0.6@6> <lora:u:0@0,1@0.5;1@1> <lora:w:1~1,0~10>",
    "<lora:z:1:in=0:mid=1:out=0> <lora:v:lbw=OUTALL>",
    "<lora:s:lbw=1,0,0,0,0,1,1,1,1,1,1,1>",
    "<lora:s:lbw=1,0,0,0,0,1,1,1,1,1,1,1,0,0,0,0,1>",
    "a [cat:dog:5] on a [sofa:0.5] [x::.25] [a|b|c]",
    "a cat AND a dog :1.5 AND (snow:0.8) :0.3",
    "[[a:b:2]:(c:1.2):0.5] [fe|] [",
    "unclosed (paren [bracket ) stray ] \\< not a tag \\\\",
    "é ☕ 日本語 (ünïcode:1.1)",
    "(a:1.2.3)",
    "<lora:unterminated",
    "<lora:x:te=1:te=2>",
    "<lora:x:bogus=1>",
]

JOBS = [
    '{"prompt": "a red fox in snow", "seed": 1, "steps": 25}\n'
    '{"prompt": "a red fox <lora:ink_style:0.8>", "negative": "blurry", "seed": 2, "out": "fox/{seed}"}\n'
    '{"prompt": "a lighthouse", "sampler": "dpmpp-2m-karras", "batch": 4, "model": "/models/sd15"}\n',
    '# comment\n\n{"prompt": "a fox <lora:ink_style:{s}>", "steps": 25, "out": "ink-{s}/", '
    '"sweep": {"seed": "1..8", "s": "0,0.5,1"}}\n',
    '{"prompt": "{p}", "cfg": "{c}", "sweep": {"p": ["a, b", "c"], "c": [5, 7.5]}}\n',
    '{"prompt": "x", "hires": {"scale": 2, "upscaler": "Latent", "steps": 0, "denoise": 0.7}}\n'
    '{"prompt": "x", "width": 640, "height": 448, "hires": {"width": 1024, "upscaler": "Lanczos"}}\n'
    '{"prompt": "x", "hires": {}}\n',
    '{"prompt": "x", "denoise": 0.5, "resize_mode": "crop", "mask_blur": 4}\n'
    '{"prompt": "x", "inpaint_area": "masked", "inpaint_padding": 32, "masked_content": "fill", '
    '"outpaint": "8,8,0,0"}\n',
    '{"prompt": "x", "schedule": "karras", "sde_noise": "brownian", "seed": -1}\n'
    '{"prompt": "b",}\n[1]\n{"prompt": "c", "sweep": 3}\n{"stesp": 3, "prompt": "d"}\n'
    '{"prompt": "e", "out": "../{hash}"}\n{"prompt": "f", "out": "{nope}"}\n\xff\n',
]


def chunk(kind, body):
    import struct

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(chunks_before, chunks_after=()):
    """A 1x1 RGB PNG with text chunks before and after the image data (readers must see both)."""
    import struct

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x00\x00")
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    out += b"".join(chunks_before) + chunk(b"IDAT", idat) + b"".join(chunks_after)
    return out + chunk(b"IEND", b"")


def text_seeds():
    params = "a fox, (snow:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, " \
        'Seed: 1, Size: 512x512, Lora hashes: "ink: abc, x: def"'
    stipple = '{"prompt":"a fox","seed":1}'
    lat1 = params.encode("latin-1")
    utf8 = "日本語 fox\nSteps: 4".encode()
    return {
        "text": png([chunk(b"tEXt", b"parameters\x00" + lat1)], [chunk(b"tEXt", b"stipple\x00" + stipple.encode())]),
        "ztxt": png([chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(lat1))]),
        "itxt": png([chunk(b"iTXt", b"parameters\x00\x00\x00\x00\x00" + utf8)],
                    [chunk(b"iTXt", b"stipple\x00\x01\x00\x00\x00" + zlib.compress(stipple.encode()))]),
        "none": png([]),
    }


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape"))


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for name in ADAPTERS:
        with open(os.path.join(ROOT, "tests", "fixtures", "lora", name + ".safetensors"), "rb") as f:
            write("safetensors_header", f"seed-{name}.safetensors", f.read())
    for i, p in enumerate(PROMPTS):
        write("prompt", f"seed-{i:02}.txt", p)
    for name, data in text_seeds().items():
        write("png_text", f"seed-{name}.png", data)
    with open(os.path.join(ROOT, "tests", "fixtures", "img2img", "mask_small.png"), "rb") as f:
        write("png_text", "seed-mask_small.png", f.read())
    for i, j in enumerate(JOBS):
        data = j.replace("\xff", "").encode() + (b"\xff\n" if "\xff" in j else b"")
        write("job_lines", f"seed-{i:02}.jsonl", data)


if __name__ == "__main__":
    main()
