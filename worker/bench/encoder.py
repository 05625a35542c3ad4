"""`embedstream bench encoder`: our Encoder vs model2vec.StaticModel.encode, same model, same texts, same run.

For each threading mode a child process is started with a clean environment (single: TOKENIZERS_PARALLELISM=false
and one BLAS/OpenMP/Rayon thread; all: TOKENIZERS_PARALLELISM=true and every core). In the child, for each text
set, both encoders get a warm-up, then R interleaved timed repeats (the order alternates each repeat; best of R
counts), their outputs are compared (max abs difference), and our encoder is profiled: tokenization (the
encode_batch_fast call, then the ids extraction), lookup+pooling (`Encoder.pool`) and normalization.

model2vec is always called with use_multiprocessing=False (its threaded path sets TOKENIZERS_PARALLELISM=false in
the process environment for inputs over 10k texts); the child checks after every call that the variable is
unchanged and reports a leak.

Without --model a synthetic "gemma-like" model is built once and cached (see worker.bench.synthetic): Unigram
with NFKC + Metaspace, 32,768 tokens, dim 768, float32, normalize=True. Results go to stdout as Markdown tables;
progress goes to stderr.

The exact-path table measures `Encoder(model, fast_path="off")`. With --fast-path the child also measures the fast
path (worker.fastpath) against model2vec, per set: **cold** = the first pass over the set by a freshly constructed
Encoder (empty piece cache, fresh tokenizer; its construction, which runs the self-check, is timed apart), **warm** =
a second pass by the same Encoder, interleaved with model2vec passes; plus the cache's hit rate, entries and bytes,
the share of the cold pass spent in the fill's tokenizer call, and the max abs difference to model2vec and to the
exact path. With --e2e the parent also times whole processes from a cold start, `python -m worker encode --model
DIR -i set.jsonl -o out.npy` against a model2vec script that reads the same file and saves the same .npy, in the
same threading environments, and compares the two .npy files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_TEXTS = {"short": 20_000, "paragraph": 5_000, "chunk": 2_000}
THREAD_MODES = ("single", "all")
PACKAGES = ("numpy", "scipy", "tokenizers", "safetensors", "model2vec")
_START = [time.time()]  # the parent's start; a child takes it over from its job


def _progress(msg: str) -> None:
    print(f"[bench encoder {time.time() - _START[0]:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}")
        return list(dict.fromkeys(items))

    return parse


def _texts_spec(value: str) -> dict[str, int]:
    """`N` (every set) or `short=20000,chunk=500` (those sets; the others keep their defaults)."""
    try:
        if "=" not in value:
            n = int(value)
            if n < 1:
                raise ValueError
            return dict.fromkeys(DEFAULT_TEXTS, n)
        out: dict[str, int] = {}
        for part in value.split(","):
            name, _, num = part.partition("=")
            if name.strip() not in DEFAULT_TEXTS or int(num) < 1:
                raise ValueError
            out[name.strip()] = int(num)
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected a positive count (every set) or set=count pairs, e.g. short=20000,chunk=500"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0] if __doc__ else None
    p.add_argument("--model", metavar="DIR",
                   help="a Model2Vec folder; default: the cached synthetic gemma-like model (built on first use)")
    p.add_argument("--texts", type=_texts_spec, default={}, metavar="N",
                   help="texts per set: N for every set, or short=N,paragraph=N,chunk=N "
                        f"(default {','.join(f'{k}={v}' for k, v in DEFAULT_TEXTS.items())})")
    p.add_argument("--repeat", type=int, default=3, metavar="R", help="timed repeats per encoder; best counts")
    p.add_argument("--sets", type=_csv(tuple(DEFAULT_TEXTS)), default=list(DEFAULT_TEXTS),
                   help="text sets to run (default short,paragraph,chunk)")
    p.add_argument("--threads", type=_csv(THREAD_MODES), default=list(THREAD_MODES),
                   help="single (one core, TOKENIZERS_PARALLELISM=false) and/or all (all cores); default both")
    p.add_argument("--batch-size", type=int, default=1024,
                   help="texts per encode call for both encoders (model2vec's default batch_size is 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated text sets")
    p.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    f = p.add_argument_group("fast path")
    f.add_argument("--fast-path", action="store_true",
                   help="also measure the fast path against model2vec: cold (first pass from an empty cache) and warm")
    f.add_argument("--fast-path-only", action="store_true",
                   help="measure only the fast path (skip the exact-path table); implies --fast-path")
    f.add_argument("--e2e", action="store_true",
                   help="also time `python -m worker encode` against an equivalent model2vec script, one fresh "
                        "process per run (cold start, .npy output)")
    f.add_argument("--cache-mb", type=float, default=256, help="fast-path cache bound (default 256)")
    f.add_argument("--passes", action="store_true",
                   help="first pass and steady state (unseen texts, warm cache) vs model2vec, tokenizer alone, "
                        "pooling alone, construction; one core; default model: the gemma-like fixture "
                        "(worker.bench.passes)")
    g = p.add_argument_group("synthetic model (without --model)")
    g.add_argument("--kind", choices=("unigram", "bpe", "wordpiece"), default="unigram")
    g.add_argument("--vocab-size", type=int, default=32_768)
    g.add_argument("--dim", type=int, default=768)


from worker.bench.encoder_report import report, report_e2e  # noqa: E402

# --- parent: machine, settings, children, report -----------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 1024**2, 1)
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable, "memory_gib": mem_gib,
            "os": f"{platform.system()} {platform.release()}", "loadavg_at_start": load}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def model_info(folder: Path) -> dict[str, Any]:
    cfg = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    from worker.model import load_model

    m = load_model(folder)
    return {"path": str(folder), "tokenizer": tok.get("model", {}).get("type"),
            "normalizer": (tok.get("normalizer") or {}).get("type"),
            "pre_tokenizer": (tok.get("pre_tokenizer") or {}).get("type"),
            "vocab_size": m.vocab_size, "dim": m.dim, "dtype": m.dtype, "normalize": bool(cfg.get("normalize")),
            "max_length": cfg.get("max_length", 512), "weights": m.weights is not None,
            "mapping": m.mapping is not None}


def child_env(mode: str, cores: int) -> dict[str, str]:
    """The environment of a measuring child: the parent's, with every threading knob set for `mode`."""
    env = dict(os.environ)
    n = "1" if mode == "single" else str(cores)
    env["TOKENIZERS_PARALLELISM"] = "false" if mode == "single" else "true"
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[var] = n
    env.pop("RAYON_RS_NUM_CPUS", None)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONHASHSEED"] = "0"
    return env


def run_child(job: dict[str, Any], mode: str, cores: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-encoder-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job | {"mode": mode, "out": str(out_file)}))
        code = f"import sys; from worker.bench.encoder_child import child_main; sys.exit(child_main({str(job_file)!r}))"
        # The child's output (progress, library warnings) is relayed line by line to our stderr.
        with subprocess.Popen([sys.executable, "-c", code], env=child_env(mode, cores), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(line)
                sys.stderr.flush()
        if proc.returncode != 0 or not out_file.exists():
            raise RuntimeError(f"bench child ({mode}) failed with exit code {proc.returncode}")
        result: dict[str, Any] = json.loads(out_file.read_text())
        return result


M2V_SCRIPT = """
import sys
import numpy as np
import orjson
from model2vec import StaticModel
folder, src, dst, batch_size = sys.argv[1:5]
model = StaticModel.from_pretrained(folder)
with open(src, "rb") as f:
    texts = [orjson.loads(line)["text"] for line in f if line.strip()]
np.save(dst, model.encode(texts, use_multiprocessing=False, batch_size=int(batch_size), show_progress_bar=False))
"""


def _run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, errors="replace", check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with exit code {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, proc.stderr


def run_e2e(folder: Path, sets: dict[str, int], seed: int, repeat: int, modes: Sequence[str], cores: int,
            batch_size: int) -> list[dict[str, Any]]:
    """Time `python -m worker encode` and the model2vec script as fresh processes, alternating, best of R."""
    import numpy as np
    import orjson

    from worker.bench.synthetic import TEXT_SETS

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        for name, n in sets.items():
            texts = TEXT_SETS[name](int(n), seed)
            src, one = Path(tmp) / f"{name}.jsonl", Path(tmp) / "one.jsonl"
            src.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
            one.write_bytes(orjson.dumps({"text": texts[0]}) + b"\n")
            for mode in modes:
                env = child_env(mode, cores)
                env["EMBED_LOG__FORMAT"] = "json"

                def ours(path: Path, dst: Path, env: dict[str, str] = env) -> tuple[float, str]:
                    return _run_timed([sys.executable, "-m", "worker", "encode", "--model", str(folder), "-i",
                                       str(path), "-o", str(dst), "--batch-size", str(batch_size)], env)

                def theirs(path: Path, dst: Path, env: dict[str, str] = env) -> tuple[float, str]:
                    return _run_timed([sys.executable, "-c", M2V_SCRIPT, str(folder), str(path), str(dst),
                                       str(batch_size)], env)

                times: dict[str, list[float]] = {"ours": [], "model2vec": [], "ours_startup": [],
                                                 "model2vec_startup": []}
                log_text = ""
                for rep in range(repeat):
                    order = ("ours", "model2vec") if rep % 2 == 0 else ("model2vec", "ours")
                    for who in order:
                        run = ours if who == "ours" else theirs
                        wall, err = run(src, Path(tmp) / f"{who}.npy")
                        times[who].append(wall)
                        times[f"{who}_startup"].append(run(one, Path(tmp) / f"{who}-one.npy")[0])
                        if who == "ours":
                            log_text = err
                        _progress(f"  e2e {name}/{mode}: repeat {rep + 1}/{repeat} {who:9s} {wall:.2f}s")
                a, b = np.load(Path(tmp) / "ours.npy"), np.load(Path(tmp) / "model2vec.npy")
                status = "on" if "fast path on" in log_text else "off" if "fast path off" in log_text else "?"
                best = {k: min(v) for k, v in times.items()}
                rows.append({"set": name, "threads": mode, "texts": len(texts), "ours_s": best["ours"],
                             "model2vec_s": best["model2vec"], "ours_startup_s": best["ours_startup"],
                             "model2vec_startup_s": best["model2vec_startup"],
                             "ratio": best["model2vec"] / best["ours"], "runs": times, "fast_path": status,
                             "max_abs_diff": float(np.abs(a - b.astype(np.float32)).max()) if a.size else 0.0,
                             "same_shape": a.shape == b.shape})
    return rows


def main(args: argparse.Namespace) -> int:
    if args.passes:
        from worker.bench.passes import main_passes

        return main_passes(args)
    sets = {name: args.texts.get(name, DEFAULT_TEXTS[name]) for name in args.sets}
    if args.repeat < 1 or args.batch_size < 1:
        print("bench encoder: --repeat and --batch-size must be at least 1", file=sys.stderr)
        return 2
    if args.model:
        folder = Path(args.model)
    else:
        from worker.bench.synthetic import cached_model

        t0 = time.time()
        folder = cached_model(args.kind, vocab_size=args.vocab_size, dim=args.dim, dtype="float32",
                              normalize=True, log=_progress)
        _progress(f"model ready in {time.time() - t0:.1f}s: {folder}")
    machine = machine_info()
    vers = versions()
    settings = {"model": model_info(folder), "sets": sets, "repeat": args.repeat, "batch_size": args.batch_size,
                "seed": args.seed, "threads": list(args.threads), "argv": sys.argv[1:]}
    fast_only = bool(getattr(args, "fast_path_only", False))
    job = {"model": str(folder), "sets": sets, "repeat": args.repeat, "batch_size": args.batch_size,
           "seed": args.seed, "start": _START[0], "exact": not fast_only,
           "fast_path": fast_only or bool(getattr(args, "fast_path", False)),
           "cache_mb": float(getattr(args, "cache_mb", 256))}
    settings["fast_path"] = job["fast_path"]
    settings["cache_mb"] = job["cache_mb"]
    rows: list[dict[str, Any]] = []
    for mode in args.threads:
        _progress(f"threads={mode}: starting a child process")
        child = run_child(job, mode, machine["usable_cores"])
        for r in child["results"]:
            rows.append(r | {"threads": mode, "env": child["env"]})
    report(machine, vers, settings, rows)
    e2e: list[dict[str, Any]] = []
    if getattr(args, "e2e", False):
        e2e = run_e2e(folder, sets, args.seed, args.repeat, args.threads, machine["usable_cores"], args.batch_size)
        report_e2e(e2e)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "versions": vers, "settings": settings,
                                               "results": rows, "e2e": e2e}, indent=2))
        _progress(f"wrote {args.json}")
    ok = all(r["parity_ok"] and not r["env_leak"] for r in rows)
    ok = ok and all(r["same_shape"] and r["max_abs_diff"] <= 1e-6 for r in e2e)
    if not ok:
        print("bench encoder: parity or environment check FAILED (see the tables above)", file=sys.stderr)
    return 0 if ok else 1
