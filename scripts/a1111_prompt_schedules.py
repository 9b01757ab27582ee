#!/usr/bin/env python3
"""Expected per-step prompt schedules from A1111's own prompt parser, for stipple's prompt editing.

Imports `modules/prompt_parser.py` of AUTOMATIC1111/stable-diffusion-webui from the path given (its
code is not part of stipple) and runs, on A1111's documented examples and on generated prompts:
  - prompts without AND: get_learned_conditioning_prompt_schedules([prompt], steps)
  - prompts with AND: get_multicond_prompt_list([prompt]) (the parts and their weights), then the
    schedule of each part's text.
Writes tests/fixtures/prompt/a1111_schedules.json: {"cases": [{"prompt", "steps", "and",
"parts": [{"weight", "schedule": [[until_step, text], ...]}]}]}. The generator is seeded, so the
file is reproducible; it only makes prompts that A1111's grammar accepts (a `|` outside `[a|b]`
makes A1111 ignore every edit, which stipple refuses instead).
Needs: lark (pip install lark); torch only if the given file imports it at module level.
Run: /work/venv/bin/python scripts/a1111_prompt_schedules.py PATH/TO/modules/prompt_parser.py
"""
import argparse
import importlib.util
import json
import pathlib
import random

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/prompt/a1111_schedules.json"

# A1111's docstring examples (10 steps), the example at the top of its prompt_parser.py (100 steps),
# the get_learned_conditioning docstring (20 steps) and the composable-diffusion wiki example.
DOCUMENTED = [
    (p, 10) for p in [
        "test", "a [b:3]", "a [b: 3]", "a [[[b]]:2]", "[(a:2):3]", "a [b : c : 1] d",
        "a[b:[c:d:2]:1]e", "a [unbalanced", "a [b:.5] c", "((a][:b:c [d:3]", "[a|(b:1.1)]",
        "[fe|]male", "[fe|||]male", "a [b:1.5] c",
    ]
] + [
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
     "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]", 100),
    ("a red crown", 20),
    ("a [blue:green:5] jeweled crown", 20),
    ("a cat :1.2 AND a dog AND a penguin :2.2", 20),
    ("a [cat:dog:0.5] AND [red|blue] hat :0.8", 6),
]

WORDS = ["a", "cat", "red dog", "tree", "sky", "3", "x", "blue hat", "é", "night, rain", "BREAK",
         "\\(lit\\)", "1.5", "AN", "ANDY"]
WHEN = ["1", "2", "3", "5", "10", "0", "-1", "+2", " 3", "3 ", " 4 ", "0.5", ".5", "0.25", "0.75",
        "1.0", "1.5", "0.", "2.5e-1", "1e1", "0.3", "0.7", "0.1", "0.9", "0.33", "12"]
STEPS = [1, 2, 3, 4, 5, 8, 10, 12]


def words(r):
    return r.choice(WORDS) + r.choice(["", " ", ", ", " "])


def sequence(r, depth):
    """Text the grammar's `prompt` rule accepts: words, emphasis, edits, alternations."""
    out = []
    for _ in range(r.randint(0, 3 if depth == 0 else 2)):
        k = r.random()
        if k < 0.35 or depth >= 3:
            out.append(words(r))
        elif k < 0.5:
            inner = sequence(r, depth + 1)
            out.append(r.choice(["(%s)", "(%s:1.2)", "[%s]", "(%s: 0.8)"]) % inner)
        elif k < 0.8:
            a, b, w = sequence(r, depth + 1), sequence(r, depth + 1), r.choice(WHEN)
            out.append(r.choice(["[%s:%s:%s]" % (a, b, w), "[%s:%s]" % (b, w), "[%s::%s]" % (a, w)]))
        else:
            n = r.randint(2, 4)
            out.append("[" + "|".join(sequence(r, depth + 1) for _ in range(n)) + "]")
    return "".join(out)


def top(r):
    """A top-level prompt: sometimes with stray brackets or colons between the pieces."""
    pieces = [sequence(r, 0) for _ in range(r.randint(1, 3))]
    if r.random() < 0.2:
        pieces.insert(r.randrange(len(pieces) + 1), r.choice(["(", "]", ":", "[", ")", "((", "]:"]))
    return "".join(pieces)


def generated(n, seed=20241205):
    r = random.Random(seed)
    out = []
    while len(out) < n:
        if r.random() < 0.25:
            parts = []
            for _ in range(r.randint(2, 3)):
                w = r.choice(["", "", " :1.5", ":0.5", " : 2", ":-1", " :.5"])
                parts.append(top(r) + w)
            prompt = r.choice([" AND ", " AND", "AND "]).join(parts)
        else:
            prompt = top(r)
        prompt = prompt.strip()
        if prompt:
            out.append((prompt, r.choice(STEPS)))
    return out


def load(path):
    spec = importlib.util.spec_from_file_location("a1111_prompt_parser", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def case(pp, prompt, steps):
    has_and = pp.re_AND.search(prompt) is not None
    if has_and:
        indexes, flat, _ = pp.get_multicond_prompt_list([prompt])
        parts = [(flat[i], w) for i, w in indexes[0]]
    else:
        parts = [(prompt, 1.0)]
    out = []
    for text, weight in parts:
        schedule = pp.get_learned_conditioning_prompt_schedules([text], steps)[0]
        out.append({"weight": weight, "schedule": [[t, s] for t, s in schedule]})
    return {"prompt": prompt, "steps": steps, "and": has_and, "parts": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt_parser", type=pathlib.Path, help="A1111's modules/prompt_parser.py")
    ap.add_argument("--count", type=int, default=3000, help="generated prompts (default 3000)")
    a = ap.parse_args()
    pp = load(a.prompt_parser)
    cases = [case(pp, p, s) for p, s in DOCUMENTED + generated(a.count)]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"cases": cases}, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{len(cases)} cases, {OUT.stat().st_size} bytes -> {OUT}")


if __name__ == "__main__":
    main()
