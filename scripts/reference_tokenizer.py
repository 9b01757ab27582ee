#!/usr/bin/env python3
"""Reference ids for stipple's ClipTokenizer (src/pipeline/tokenizer.rs), from transformers' CLIPTokenizer.

Writes tests/fixtures/reference/tokenizer.json (prompt -> ids without specials, and the padded
77-id form diffusers builds) and tests/fixtures/reference/clip_tokenizer_mini/{vocab.json,merges.txt}:
the SD1.5 vocabulary cut down to the merges these prompts actually use (same ids, same merge order),
which yields the same ids for them; the script checks that by re-tokenizing with HF from the cut folder.
Needs: transformers (the /work/venv one) and a full CLIP tokenizer folder, either --full DIR or built
on the fly with scripts/clip_vocab.py (--source as there, or it pip-downloads open-clip-torch).
Run: /work/venv/bin/python scripts/reference_tokenizer.py [--full DIR | --source WHEEL_OR_GZ]
"""
import argparse
import json
import pathlib
import sys
import tempfile


def arg_parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", help="existing full CLIP tokenizer folder (vocab.json, merges.txt)")
    ap.add_argument("--source", help="bpe_simple_vocab_16e6.txt.gz or an open-clip-torch wheel")
    return ap


if __name__ == "__main__":
    arg_parser().parse_args()  # --help and argument errors come before the heavy imports below

from transformers import CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/reference"
sys.path.insert(0, str(ROOT / "scripts"))
import clip_vocab  # noqa: E402

LONG = ("a highly detailed matte painting of a castle on a hill at sunset, golden hour, volumetric light, "
        "by greg rutkowski and alphonse mucha, trending on artstation, 8k, octane render, sharp focus, "
        "intricate, elegant, dramatic clouds, reflections in a lake, birds flying, mountains in the "
        "background, cinematic composition, masterpiece, best quality, ultra realistic, hdr")
PROMPTS = [
    "a photo of a cat",
    "",
    "   ",
    "A Photo Of A CAT",
    "hello!!! world???",
    "!!!",
    "fish &amp; chips &lt;3",
    "café Ünïcode 日本語 emoji 🦊",
    "multiple   spaces\n\nand\tnewlines\r\n end ",
    "non\u00a0breaking\u3000ideographic\u2003em space",
    "the 1990s, 2024 and 3.14159",
    "it's a dog's life, don't you think? we're here, they've gone, I'm ok, you'll see, he'd go",
    "IT'S LOUD",
    "(masterpiece:1.2), [blurry], {braces}, <lora:foo:0.8>",
    "e\u0301cole NFC vs école",
    "ΣΟΦΙΑ final sigma ς İstanbul ß ﬁ",
    "a <|endoftext|> b <|startoftext|> c <|ENDOFTEXT|>",
    "x<|endoftext|><|endoftext|>y <|StartOfText|>z < |endoftext|> <|startoftext |>",
    "<|endoftext|>",
    "don’t “curly” quotes — dashes… ellipsis",
    "x" * 40,
    "1234567890 " * 3,
    LONG,
    LONG + ", " + LONG,
]


def needed_merges(tok, prompts):
    """Merges HF applied for these prompts: the merge tree behind every token it produced."""
    merges = [tuple(l.split()) for l in (pathlib.Path(tok.name_or_path) / "merges.txt").read_text(
        encoding="utf-8").split("\n")[1:] if l]
    by_result = {a + b: (a, b) for a, b in merges}
    rank = {m: i for i, m in enumerate(merges)}
    need = set()

    def expand(t):
        if t in by_result and by_result[t] not in need:
            need.add(by_result[t])
            for part in by_result[t]:
                expand(part)

    for p in prompts:
        for t in tok.convert_ids_to_tokens(tok(p, add_special_tokens=False).input_ids):
            expand(t)
    return sorted(need, key=rank.__getitem__)


def write_mini(full_dir, merges, out_dir):
    vocab = json.loads((full_dir / "vocab.json").read_text(encoding="utf-8"))
    keep = set(list(clip_vocab.bytes_to_unicode().values()))
    keep |= {c + "</w>" for c in list(keep)} | {clip_vocab.BOS, clip_vocab.EOS}
    keep |= {a + b for a, b in merges}
    mini = {t: i for t, i in vocab.items() if t in keep}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(mini, ensure_ascii=False), encoding="utf-8")
    body = "".join(f"{a} {b}\n" for a, b in merges)
    (out_dir / "merges.txt").write_text(f"{clip_vocab.MERGES_HEADER}\n{body}", encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (out_dir / name).write_text((full_dir / name).read_text())


def ids(tok, p):
    return {
        "ids": tok(p, add_special_tokens=False).input_ids,
        "padded": tok(p, padding="max_length", max_length=77, truncation=True).input_ids,
    }


def main():
    args = arg_parser().parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        full = pathlib.Path(args.full) if args.full else pathlib.Path(tmp) / "full"
        if not args.full:
            clip_vocab.main([str(full)] + (["--source", args.source] if args.source else []))
        tok = CLIPTokenizer.from_pretrained(str(full))
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        cases = [{"prompt": p, **ids(tok, p)} for p in PROMPTS]
        mini_dir = OUT / "clip_tokenizer_mini"
        write_mini(full, needed_merges(tok, PROMPTS), mini_dir)
        mini = CLIPTokenizer.from_pretrained(str(mini_dir))
        for c in cases:
            assert ids(mini, c["prompt"]) == {"ids": c["ids"], "padded": c["padded"]}, c["prompt"]
    import transformers
    (OUT / "tokenizer.json").write_text(json.dumps(
        {"meta": {"transformers": transformers.__version__, "pad_id": tok.pad_token_id}, "cases": cases},
        ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT / 'tokenizer.json'} and {mini_dir} ({len(cases)} prompts)")


if __name__ == "__main__":
    main()
