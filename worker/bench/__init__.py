"""Benchmarks: `embedstream bench encoder`, `bench pipeline`, `bench startup` and `bench soak`."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "encoder": "encoder vs model2vec.StaticModel.encode: texts/s and tokens/s, one core and all cores",
    "startup": "process start to /readyz 200 with the tokenizer verdict stored and without (the full check)",
    "pipeline": "end to end through a real broker: msg/s, CPU per message vs the encoder alone, memory, latency",
    "soak": "a steady load at 80% of the measured maximum for an hour: per-minute figures, fails on loss or growth",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True)
    for name, help_text in BENCHES.items():
        module = importlib.import_module(f"worker.bench.{name}")
        module.add_arguments(sub.add_parser(name, help=help_text))


def main(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"worker.bench.{args.bench}")
    return int(module.main(args))
