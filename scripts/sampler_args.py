"""The command line the sampler reference scripts share: `--schedulers` and/or `--images`.

Light on purpose (argparse only): the scripts parse their arguments before importing torch, so `--help` and
argument errors come at once.
"""
import argparse


def sampler_arg_parser(doc, schedulers_help, images_help):
    """A parser with the two switches; a script adds its own options to it."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedulers", action="store_true", help=schedulers_help)
    ap.add_argument("--images", action="store_true", help=images_help)
    ap.add_argument("--resume", action="store_true", help="with --images: keep the images already written")
    return ap


def parse_sampler_args(ap, *more):
    """The parsed arguments; giving none of the switches (the two, and the script's `more`) is an
    argument error."""
    args = ap.parse_args()
    switches = ["schedulers", "images", *more]
    if not any(getattr(args, s) for s in switches):
        ap.error("give " + ", ".join(f"--{s}" for s in switches[:-1]) + f" and/or --{switches[-1]}")
    return args
