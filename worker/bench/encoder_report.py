"""`bench encoder`'s Markdown tables: the exact-path table with its profile, the fast-path table and the
whole-process table. Apart from the measuring code so that either can change alone.
"""

from __future__ import annotations

import sys
from typing import Any


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
