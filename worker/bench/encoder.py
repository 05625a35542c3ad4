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
from functools import partial
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
        code = f"import sys; from worker.bench.encoder import child_main; sys.exit(child_main({str(job_file)!r}))"
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


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def report(machine: dict[str, Any], vers: dict[str, str], settings: dict[str, Any], rows: list[dict[str, Any]],
           out: Any = None) -> None:
    out = out or sys.stdout
    w = out.write
    w("# bench encoder: worker.encoder.Encoder vs model2vec.StaticModel.encode\n\n")
    load = machine["loadavg_at_start"]
    w(f"machine:  {machine['cpu']}, {machine['logical_cores']} logical cores ({machine['usable_cores']} usable), "
      f"{machine['memory_gib']} GiB RAM, {machine['os']}"
      + (f", load average at start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}" if load else "") + "\n")
    w("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + "\n")
    m = settings["model"]
    w(f"model:    {m['path']}\n          {m['tokenizer']} ({m['normalizer']} + {m['pre_tokenizer']}), "
      f"vocab {m['vocab_size']:,}, dim {m['dim']}, {m['dtype']}, normalize={m['normalize']}, "
      f"max_length={m['max_length']}, weights={m['weights']}, mapping={m['mapping']}\n")
    w(f"settings: sets {', '.join(f'{k}={v}' for k, v in settings['sets'].items())}; repeat {settings['repeat']} "
      f"(best of, interleaved, after a warm-up); batch size {settings['batch_size']}; seed {settings['seed']}; "
      f"threads {','.join(settings['threads'])}\n")
    w("          model2vec: encode(texts, use_multiprocessing=False, batch_size=...); ours: Encoder.encode_batch "
      "per batch" + (f"; fast-path cache {settings['cache_mb']:g} MiB" if settings.get("fast_path") else "")
      + "\n\n")

    fast_rows = [r for r in rows if r.get("fast")]
    rows = [r for r in rows if "ours" in r]
    if not rows:
        report_fast_path(fast_rows, out)
        out.flush()
        return
    w("## Throughput (best of R; tokens = pooled tokens after truncation and unknown-token removal)\n\n")
    w("| set | threads | texts | tokens/text | ours texts/s | model2vec texts/s | ours tokens/s "
      "| model2vec tokens/s | ours/model2vec | max abs diff | parity |\n")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    for r in rows:
        w(f"| {r['set']} | {r['threads']} | {r['texts']:,} | {r['tokens'] / r['texts']:.1f} "
          f"| {_fmt_rate(r['ours']['texts_per_s'])} | {_fmt_rate(r['model2vec']['texts_per_s'])} "
          f"| {_fmt_rate(r['ours']['tokens_per_s'])} | {_fmt_rate(r['model2vec']['tokens_per_s'])} "
          f"| {r['ratio']:.2f}x | {r['max_abs_diff']:.2e} | {'ok' if r['parity_ok'] else 'FAILED'} |\n")
    w("\n")
    w("## Timing detail (seconds per repeat, in run order; CPU s / wall s of the best repeat)\n\n")
    w("| set | threads | ours s | model2vec s | ours CPU/wall | model2vec CPU/wall | truncated texts "
      "| chars/text |\n|---|---|---|---|---:|---:|---:|---:|\n")
    for r in rows:
        w(f"| {r['set']} | {r['threads']} | {' '.join(f'{t:.3f}' for t in r['ours']['seconds'])} "
          f"| {' '.join(f'{t:.3f}' for t in r['model2vec']['seconds'])} | {r['ours']['cpu_per_wall']:.2f} "
          f"| {r['model2vec']['cpu_per_wall']:.2f} | {r['truncated']:,} | {r['chars_per_text']:.0f} |\n")
    w("\n")
    w("## Profile of our encoder (best of R profiled passes; share of its wall time)\n\n")
    w("| set | threads | total s | µs/text | tokenize: encode_batch_fast | tokenize: ids extraction "
      "| lookup+pooling (pool) | normalize | other |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        p = r["profile"]
        tot = p["total"]

        def pct(key: str, tot: float = tot, p: dict[str, float] = p) -> str:
            return f"{100 * p[key] / tot:.1f}%"

        w(f"| {r['set']} | {r['threads']} | {tot:.3f} | {1e6 * tot / r['texts']:.1f} | {pct('tokenize_call')} "
          f"| {pct('ids_extraction')} | {pct('pool')} | {pct('normalize')} | {pct('other')} |\n")
    report_fast_path(fast_rows, out)
    leaks = [r for r in rows + fast_rows if r["env_leak"]]
    if leaks:
        w("\nWARNING: TOKENIZERS_PARALLELISM changed during a model2vec call in: "
          + ", ".join(f"{r['set']}/{r['threads']}" for r in leaks) + "\n")
    out.flush()


def report_fast_path(rows: list[dict[str, Any]], out: Any) -> None:
    if not rows:
        return
    w = out.write
    w("\n## Fast path vs model2vec (cold = first pass of a new Encoder from an empty cache; warm = second pass; "
      "best of R)\n\n")
    w("| set | threads | texts | model2vec s | fast cold s | fast warm s | cold ×model2vec | warm ×model2vec "
      "| hit rate cold | hit rate warm | pieces tokenized | cache entries | cache MiB | fill tokenizer share of cold "
      "| exact-path texts | max abs diff vs model2vec | vs exact path |\n")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        f = r["fast"]
        w(f"| {r['set']} | {r['threads']} | {r['texts']:,} | {f['model2vec_s']:.3f} | {f['cold_s']:.3f} "
          f"| {f['warm_s']:.3f} | **{f['cold_ratio']:.2f}×** | **{f['warm_ratio']:.2f}×** "
          f"| {100 * f['hit_rate_cold']:.1f}% | {100 * f['hit_rate_warm']:.1f}% | {f['misses']:,} | {f['entries']:,} "
          f"| {f['bytes'] / 2**20:.1f} | {100 * f['fill_tokenizer_s'] / f['cold_s']:.0f}% "
          f"| {f['exact_texts']:,} | {f['max_abs_diff_model2vec']:.2e} | {f['max_abs_diff_exact']:.2e} |\n")
    w("\n")
    w("| set | threads | fast path | Encoder construction s (incl. self-check) | cold runs s | warm runs s "
      "| model2vec runs s |\n|---|---|---|---:|---|---|---|\n")
    for r in rows:
        f = r["fast"]
        w(f"| {r['set']} | {r['threads']} | {f['status']} | {f['init_s']:.3f} "
          f"| {' '.join(f'{t:.3f}' for t in f['cold_runs'])} | {' '.join(f'{t:.3f}' for t in f['warm_runs'])} "
          f"| {' '.join(f'{t:.3f}' for t in f['model2vec_runs'])} |\n")
    out.flush()


def report_e2e(rows: list[dict[str, Any]], out: Any = None) -> None:
    out = out or sys.stdout
    w = out.write
    w("\n## Whole processes from a cold start: `python -m worker encode` vs a model2vec script (best of R)\n\n")
    w("Each run is a fresh process: interpreter start, imports, model load (ours: plus the fast path's self-check), "
      "reading the JSON-lines file, encoding, writing one .npy file. Startup = the same command on a 1-line file.\n\n")
    w("| set | threads | texts | model2vec script s | worker encode s | ×model2vec | model2vec startup s "
      "| worker startup s | × without startup | fast path | max abs diff |\n")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
    for r in rows:
        net = (r["model2vec_s"] - r["model2vec_startup_s"]) / max(r["ours_s"] - r["ours_startup_s"], 1e-9)
        w(f"| {r['set']} | {r['threads']} | {r['texts']:,} | {r['model2vec_s']:.2f} | {r['ours_s']:.2f} "
          f"| **{r['ratio']:.2f}×** | {r['model2vec_startup_s']:.2f} | {r['ours_startup_s']:.2f} | {net:.2f}× "
          f"| {r['fast_path']} | {r['max_abs_diff']:.2e} |\n")
    out.flush()


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


# --- child: one threading mode ------------------------------------------------------------------------------


def _batches(texts: Sequence[str], size: int) -> list[Sequence[str]]:
    return [texts[i:i + size] for i in range(0, len(texts), size)]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    return out, wall, time.process_time() - c0


def profile_once(enc: Any, texts: Sequence[str], batch_size: int) -> tuple[dict[str, float], Any]:
    """One pass of our encoder with the time split by stage; returns (seconds per stage, vectors).

    Tokenization is `Encoder.tokenize` with its tokenizer library call (`backend.encode_flat`) timed on its own
    (the rest of tokenize is the pre-cut, truncation and unknown-token removal); pooling is `Encoder.pool`;
    normalization repeats `Encoder.encode_batch`'s three lines (the caller checks the vectors are identical).
    """
    import numpy as np

    spent = {"tokenize_call": 0.0, "ids_extraction": 0.0, "pool": 0.0, "normalize": 0.0}
    backend = enc.backend
    inner = backend.encode_flat
    call_time = [0.0]

    def timed_call(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            call_time[0] += time.perf_counter() - t

    outs = []
    backend.encode_flat = timed_call
    try:
        start = time.perf_counter()
        for batch in _batches(texts, batch_size):
            call_time[0] = 0.0
            t0 = time.perf_counter()
            flat, counts = enc.tokenize(batch)
            t1 = time.perf_counter()
            out = enc.pool(flat, counts)
            t2 = time.perf_counter()
            if enc.normalize:
                norm = np.linalg.norm(out, axis=1, keepdims=True)
                norm += 1e-32
                out /= norm
            t3 = time.perf_counter()
            outs.append(out)
            spent["tokenize_call"] += call_time[0]
            spent["ids_extraction"] += (t1 - t0) - call_time[0]
            spent["pool"] += t2 - t1
            spent["normalize"] += t3 - t2
        vectors = np.concatenate(outs) if outs else np.zeros((0, enc.dim), dtype=np.float32)
        total = time.perf_counter() - start
    finally:
        del backend.encode_flat  # the class's method again
    spent["other"] = max(total - sum(spent.values()), 0.0)
    spent["total"] = total
    return spent, vectors


def _run_set(name: str, texts: list[str], enc: Any, ref: Any, job: dict[str, Any], expected_env: str,
             tol: float) -> dict[str, Any]:
    import numpy as np

    bs = int(job["batch_size"])
    leak = False

    def ours(items: Sequence[str] = texts) -> tuple[Any, int, Any]:
        encoded = [enc.encode_batch(b) for b in _batches(items, bs)]
        vectors = np.concatenate([e.vectors for e in encoded]) if encoded else np.zeros((0, enc.dim), np.float32)
        counts = np.concatenate([e.token_counts for e in encoded]) if encoded else np.zeros(0, np.int64)
        return vectors, int(counts.sum()), counts

    def theirs(items: Sequence[str] = texts) -> Any:
        nonlocal leak
        try:
            return ref.encode(items, use_multiprocessing=False, batch_size=bs, show_progress_bar=False)
        finally:
            if os.environ.get("TOKENIZERS_PARALLELISM") != expected_env:
                leak = True
                os.environ["TOKENIZERS_PARALLELISM"] = expected_env

    warm = texts[: min(len(texts), 2 * bs)]
    ours(warm)
    theirs(warm)
    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "model2vec": []}
    got = expected = None
    tokens = 0
    counts = None
    for rep in range(int(job["repeat"])):
        order = ("ours", "model2vec") if rep % 2 == 0 else ("model2vec", "ours")
        for who in order:
            if who == "ours":
                (got, tokens, counts), wall, cpu = _timed(ours)
            else:
                expected, wall, cpu = _timed(theirs)
            runs[who].append((wall, cpu))
            _progress(f"  {name}: repeat {rep + 1}/{job['repeat']} {who:9s} {wall:.3f}s")
    assert got is not None and expected is not None and counts is not None
    diff = float(np.abs(got - np.asarray(expected, dtype=np.float32)).max()) if got.size else 0.0
    same_shape = got.shape == np.shape(expected)

    profiles = []
    for _ in range(int(job["repeat"])):
        spent, vectors = profile_once(enc, texts, bs)
        if not np.array_equal(vectors, got):
            raise RuntimeError("profiled pass produced different vectors than Encoder.encode_batch")
        profiles.append(spent)
    profile = min(profiles, key=lambda s: s["total"])

    def summary(who: str) -> dict[str, Any]:
        walls = [w for w, _ in runs[who]]
        best = min(range(len(walls)), key=walls.__getitem__)
        t = walls[best]
        return {"seconds": walls, "best_s": t, "texts_per_s": len(texts) / t, "tokens_per_s": tokens / t,
                "cpu_per_wall": runs[who][best][1] / t if t > 0 else 0.0}

    o, m = summary("ours"), summary("model2vec")
    max_len = enc.max_length
    return {
        "set": name, "texts": len(texts), "tokens": tokens,
        "chars_per_text": sum(map(len, texts)) / max(len(texts), 1),
        "truncated": int((counts >= max_len).sum()) if max_len is not None else 0,
        "ours": o, "model2vec": m, "ratio": m["best_s"] / o["best_s"],
        "max_abs_diff": diff, "tolerance": tol, "parity_ok": bool(same_shape and diff <= tol),
        "env_leak": leak, "profile": profile,
    }


class _TimedTokenizer:
    """Stands in for the fast path's fill (a tokenizer, or a flat encoder) and adds up the time of its calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def encode_batch(self, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.inner.encode_batch(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t

    def __call__(self, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.inner(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t


def _run_fast_path(name: str, texts: list[str], model: Any, ref: Any, job: dict[str, Any],
                   expected_env: str) -> dict[str, Any]:
    """Cold (new Encoder, first pass) and warm (second pass) fast-path runs interleaved with model2vec runs."""
    import numpy as np

    from worker.encoder import Encoder

    bs = int(job["batch_size"])
    leak = False

    def ours(enc: Any) -> Any:
        encoded = [enc.encode_batch(b) for b in _batches(texts, bs)]
        return np.concatenate([e.vectors for e in encoded]) if encoded else np.zeros((0, enc.dim), np.float32)

    def theirs() -> Any:
        nonlocal leak
        try:
            return ref.encode(texts, use_multiprocessing=False, batch_size=bs, show_progress_bar=False)
        finally:
            if os.environ.get("TOKENIZERS_PARALLELISM") != expected_env:
                leak = True
                os.environ["TOKENIZERS_PARALLELISM"] = expected_env

    warm = texts[: min(len(texts), 2 * bs)]
    ref.encode(warm, use_multiprocessing=False, batch_size=bs, show_progress_bar=False)
    runs: dict[str, list[float]] = {"cold": [], "warm": [], "model2vec": [], "init": [], "fill": []}
    got = expected = None
    stats_cold = stats_warm = (0, 0, 0, 0)
    enc = None
    for rep in range(int(job["repeat"])):
        order = ("fast", "model2vec") if rep % 2 == 0 else ("model2vec", "fast")
        for who in order:
            if who == "model2vec":
                expected, wall, _ = _timed(theirs)
                runs["model2vec"].append(wall)
                _progress(f"  {name}: repeat {rep + 1}/{job['repeat']} model2vec  {wall:.3f}s")
                continue
            enc, init, _ = _timed(lambda: Encoder(model, fast_path="auto", fast_path_cache_mb=job["cache_mb"]))
            runs["init"].append(init)
            timer = None
            if enc._fast is not None and enc._fast.fill is not None:
                timer = _TimedTokenizer(enc._fast.fill)
                enc._fast.fill = timer
            elif enc._fast is not None:
                timer = _TimedTokenizer(enc._fast.tokenizer)
                enc._fast.tokenizer = timer
            got, cold, _ = _timed(partial(ours, enc))
            stats_cold = enc.fast_path_stats()
            again, warm_s, _ = _timed(partial(ours, enc))
            stats_warm = enc.fast_path_stats()
            runs["cold"].append(cold)
            runs["warm"].append(warm_s)
            runs["fill"].append(timer.seconds if timer else 0.0)
            if not np.array_equal(again, got):
                raise RuntimeError("the fast path's second pass differs from its first")
            _progress(f"  {name}: repeat {rep + 1}/{job['repeat']} fast cold {cold:.3f}s warm {warm_s:.3f}s "
                      f"(construction {init:.3f}s, {enc.fast_path_status})")
    assert got is not None and expected is not None and enc is not None
    exact = np.concatenate([enc.encode_exact(b).vectors for b in _batches(texts, bs)])
    diff_ref = float(np.abs(got - np.asarray(expected, dtype=np.float32)).max()) if got.size else 0.0
    diff_exact = float(np.abs(got - exact).max()) if got.size else 0.0
    fp = enc._fast
    gated = 0
    if fp is not None:
        for b in _batches(enc._cut(texts), bs):
            bad = fp.gate(b)
            gated += 0 if bad is None else int(bad.sum())
    best = {k: min(v) for k, v in runs.items() if v}
    icold = runs["cold"].index(best["cold"])
    h1, m1 = stats_cold[0], stats_cold[1]
    h2, m2 = stats_warm[0] - stats_cold[0], stats_warm[1] - stats_cold[1]
    tol = 2e-3 if model.table.dtype == np.float16 else 1e-6
    return {
        "status": enc.fast_path_status, "model2vec_s": best["model2vec"], "cold_s": best["cold"],
        "warm_s": best["warm"], "init_s": best["init"], "fill_tokenizer_s": runs["fill"][icold],
        "cold_ratio": best["model2vec"] / best["cold"], "warm_ratio": best["model2vec"] / best["warm"],
        "hit_rate_cold": h1 / max(h1 + m1, 1), "hit_rate_warm": h2 / max(h2 + m2, 1), "misses": m1,
        "entries": stats_warm[2], "bytes": stats_warm[3], "exact_texts": gated,
        "max_abs_diff_model2vec": diff_ref, "max_abs_diff_exact": diff_exact,
        "parity_ok": bool(got.shape == np.shape(expected) and diff_ref <= tol and diff_exact <= 1e-6),
        "env_leak": leak, "cold_runs": runs["cold"], "warm_runs": runs["warm"], "model2vec_runs": runs["model2vec"],
        "init_runs": runs["init"],
    }


def child_main(job_file: str) -> int:
    """Measure one threading mode; the parent set this process's environment (see `child_env`)."""
    job = json.loads(Path(job_file).read_text())
    _START[0] = float(job.get("start", _START[0]))
    expected_env = "false" if job["mode"] == "single" else "true"
    if os.environ.get("TOKENIZERS_PARALLELISM") != expected_env:
        raise RuntimeError(f"child for {job['mode']} started with TOKENIZERS_PARALLELISM="
                           f"{os.environ.get('TOKENIZERS_PARALLELISM')}")
    import numpy as np
    from model2vec import StaticModel

    from worker.bench.synthetic import TEXT_SETS
    from worker.encoder import Encoder
    from worker.model import load_model

    model = load_model(job["model"])
    enc = Encoder(model, fast_path="off")  # the exact path; the fast path is measured apart (--fast-path)
    ref = StaticModel.from_pretrained(job["model"])
    if ref.max_length != enc.max_length or bool(ref.normalize) != enc.normalize:
        raise RuntimeError(f"settings differ: model2vec max_length={ref.max_length} normalize={ref.normalize}, "
                           f"ours max_length={enc.max_length} normalize={enc.normalize}")
    tol = 2e-3 if model.table.dtype == np.float16 else 1e-6
    env = {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                          "MKL_NUM_THREADS", "RAYON_NUM_THREADS")}
    results = []
    for name, n in job["sets"].items():
        t0 = time.time()
        texts = TEXT_SETS[name](int(n), int(job["seed"]))
        _progress(f"threads={job['mode']} set={name}: {len(texts):,} texts generated in {time.time() - t0:.1f}s")
        if job.get("exact", True):
            r = _run_set(name, texts, enc, ref, job, expected_env, tol)
            _progress(f"threads={job['mode']} set={name}: ours/model2vec {r['ratio']:.2f}x, "
                      f"max abs diff {r['max_abs_diff']:.2e}")
        else:
            r = {"set": name, "texts": len(texts), "parity_ok": True, "env_leak": False}
        if job.get("fast_path"):
            f = _run_fast_path(name, texts, model, ref, job, expected_env)
            r["fast"] = f
            r["parity_ok"] = r["parity_ok"] and f["parity_ok"]
            r["env_leak"] = r["env_leak"] or f["env_leak"]
            _progress(f"threads={job['mode']} set={name}: fast path cold {f['cold_ratio']:.2f}x, warm "
                      f"{f['warm_ratio']:.2f}x model2vec, max abs diff {f['max_abs_diff_model2vec']:.2e}")
        results.append(r)
    Path(job["out"]).write_text(json.dumps({"env": env, "results": results}))
    return 0
