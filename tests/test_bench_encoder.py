"""The encoder benchmark harness works end to end (tiny sizes; nothing here is timed or compared to a target)."""

from __future__ import annotations

import argparse
import json

from worker.bench import encoder as bench
from worker.bench import synthetic


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(argv)


def test_bench_encoder_reports_ratio_and_parity(model_factory, tmp_path, capsys):
    folder = model_factory("unigram", dim=32, normalize=True)
    out = tmp_path / "bench.json"
    args = parse(["--model", str(folder), "--texts", "200", "--repeat", "1", "--sets", "short",
                  "--threads", "single", "--json", str(out)])
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "ours/model2vec" in printed and "| short | single | 200 |" in printed
    report = json.loads(out.read_text())
    assert report["versions"]["model2vec"] and report["machine"]["usable_cores"] >= 1
    (row,) = report["results"]
    assert row["set"] == "short" and row["threads"] == "single" and row["texts"] == 200
    assert row["ratio"] > 0 and row["ours"]["texts_per_s"] > 0 and row["model2vec"]["texts_per_s"] > 0
    assert row["parity_ok"] and row["max_abs_diff"] <= 1e-6
    assert not row["env_leak"] and row["env"]["TOKENIZERS_PARALLELISM"] == "false"
    assert row["env"]["OMP_NUM_THREADS"] == "1"
    assert set(row["profile"]) >= {"tokenize_call", "ids_extraction", "pool", "normalize", "total"}


def test_texts_option_accepts_a_count_or_per_set_counts():
    assert parse(["--texts", "7"]).texts == {"short": 7, "paragraph": 7, "chunk": 7}
    assert parse(["--texts", "chunk=5"]).texts == {"chunk": 5}


def test_synthetic_text_sets_are_distinct_and_seeded():
    a = synthetic.short_texts(2000, seed=1)
    assert len(set(a)) == 2000
    assert synthetic.short_texts(2000, seed=1) == a and synthetic.short_texts(50, seed=2) != a[:50]
    assert all(5 <= len(t.split()) <= 40 or not t.isascii() for t in a)
    assert 45_000 <= synthetic.vocabulary_size() <= 55_000
    words = [len(t.split()) for t in synthetic.paragraph_texts(20, seed=1) if " " in t]
    assert 60 <= sum(words) / len(words) <= 140


def test_bench_encoder_passes_reports_first_pass_steady_state_and_parts(model_factory, tmp_path, capsys):
    folder = model_factory("bpe", dim=32, dtype="float16", normalize=True)
    out = tmp_path / "passes.json"
    args = parse(["--passes", "--model", str(folder), "--texts", "short=300,paragraph=40", "--repeat", "1",
                  "--json", str(out)])
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "First pass and steady state vs model2vec" in printed and "| short | 300 (" in printed
    report = json.loads(out.read_text())
    assert set(report["sets"]) == {"short", "paragraph"}
    for row in report["sets"].values():
        assert row["parity_ok"] and row["unseen"] > 0 and row["tokens"] > 0
        assert row["pooling"] == "compiled", row["pooling"]  # timed with the kernel the worker runs
        for key in ("model2vec_cpu_s", "first_cpu_s", "steady_cpu_s", "tokenizer_cpu_s", "pool_cpu_s",
                    "pool_sparse_cpu_s", "construct_cpu_s"):
            assert row[key] > 0
