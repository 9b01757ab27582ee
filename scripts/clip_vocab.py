#!/usr/bin/env python3
"""Build a Hugging Face CLIP tokenizer folder (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json) from OpenAI's `bpe_simple_vocab_16e6.txt.gz`, the way OpenAI CLIP's
SimpleTokenizer derives its vocabulary. The result is what SD1.x ships as `tokenizer/`.

Usage:  python scripts/clip_vocab.py OUT_DIR [--source FILE]
  FILE is the .txt.gz itself or an open-clip-torch wheel holding it. Without --source the wheel is
  fetched with `python -m pip download --no-deps open-clip-torch` into a temporary folder (needs pip
  and network or a pip cache; nothing is installed). Needs only the standard library otherwise.
As a module: `bytes_to_unicode()`, `read_merges(text)`, `build_vocab(merges)`, `write_folder(...)`.
"""
import argparse
import gzip
import io
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI keeps the first 49152 - 256 - 2 merges (line 0 is a version header).
N_MERGES = 49152 - 256 - 2
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode():
    """Byte -> printable character, in OpenAI's order: bytes that print as themselves (except
    space and controls) keep their code point; the rest get 256, 257, ... in byte order."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # The vocabulary lists the kept bytes first, then the remapped ones.
    return {b: table[b] for b in keep + [b for b in range(256) if b not in keep]}


def read_merges(text):
    """The merge pairs OpenAI uses: lines 1..=N_MERGES of the decompressed file."""
    lines = text.split("\n")[1:N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"expected {N_MERGES} merge pairs, found a malformed file")
    return merges


def build_vocab(merges):
    """Token list in id order: bytes, bytes + '</w>', merged pairs, then the two special tokens."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def _special(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": False}


def write_folder(out_dir, merges):
    """Write the four files SD1.5's `tokenizer/` folder has (same settings as that folder)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(merges)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    body = "\n".join(f"{a} {b}" for a, b in merges)
    (out / "merges.txt").write_text(f"{MERGES_HEADER}\n{body}\n", encoding="utf-8")
    config = {
        "add_prefix_space": False,
        "bos_token": _special(BOS),
        "do_lower_case": True,
        "eos_token": _special(EOS),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _special(EOS),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: ({kk: vv for kk, vv in v.items() if kk != "__type"} if isinstance(v, dict) else v)
               for k, v in config.items() if k.endswith("_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return vocab


def load_bpe_text(source):
    """Decompressed merges text from a .txt.gz or from a wheel (zip) that contains one."""
    path = pathlib.Path(source)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/" + BPE_NAME) or n == BPE_NAME]
            if not names:
                raise FileNotFoundError(f"{BPE_NAME} not found in {path}")
            raw = zf.read(names[0])
    else:
        raw = path.read_bytes()
    return gzip.GzipFile(fileobj=io.BytesIO(raw)).read().decode("utf-8")


def download_wheel(dest):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "open-clip-torch", "-d", str(dest)], check=True)
    wheels = sorted(pathlib.Path(dest).glob("open_clip_torch-*.whl"))
    if not wheels:
        raise FileNotFoundError("pip did not produce an open_clip_torch wheel")
    return wheels[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--source", help=f"{BPE_NAME} or an open-clip-torch wheel")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or download_wheel(tmp)
        merges = read_merges(load_bpe_text(source))
    vocab = write_folder(args.out_dir, merges)
    print(f"wrote {args.out_dir}: {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main()
