"""`bench encoder`'s measuring child: one threading mode in a process of its own (the parent set its
environment), both encoders on each text set, the profile and the fast-path runs; results to a JSON file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from worker.bench.encoder import _START, _progress


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
            enc.pooler.compile_now()
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
    enc.pooler.compile_now()  # the pooling kernel a worker runs once its background compile is done
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

