"""The tokenizer check's stored verdict (worker.prepared): a start whose verdict is stored loads neither the
reference tokenizer nor runs the check, and gives the same vectors; anything the verdict is a function of (the
tokenizer file, a library version, the settings) invalidates it; a damaged or unwritable store means the full
check, never a failure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelfactory import sample_texts
from worker import encoder as encoder_module
from worker import model as model_module
from worker import prepared, tokenizers_fast
from worker.app import open_encoder
from worker.settings import ModelSettings

TEXTS = sample_texts(300, seed=5) + ["", "   ", "émoji 🙂 and ünïcode", "x" * 3000]


@pytest.fixture()
def folder(model_factory, tmp_path) -> Path:
    """A byte-level BPE model (gigatoken runs it) in a folder of its own: tests write verdicts into it."""
    dst = tmp_path / "model"
    shutil.copytree(model_factory("bpe", dim=24), dst)
    return dst


def settings(folder: Path, cache: Path, **kw) -> ModelSettings:
    return ModelSettings(path=str(folder), prepared_dir=str(cache), **kw)


def forbid_the_check(monkeypatch) -> None:
    """Any load of `tokenizers`' tokenizer or run of the check fails the test."""
    def boom(*_a, **_k):
        raise AssertionError("the reference tokenizer was loaded or the check ran")

    monkeypatch.setattr(model_module, "_load_tokenizer", boom)
    monkeypatch.setattr(model_module.TokenizerRef, "get", boom)
    monkeypatch.setattr(encoder_module, "select", boom)
    monkeypatch.setattr(encoder_module, "check_corpus", boom)


def test_a_stored_verdict_skips_the_reference_tokenizer_and_gives_the_same_vectors(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first, _ = open_encoder(settings(folder, cache))
    assert first.verdict is None and first.backend.name == "gigatoken", first.tokenizer_description
    stored = list(cache.glob("*.json"))
    assert len(stored) == 1, "a full check stores its verdict in the cache directory"
    expected = first.encode(TEXTS)

    forbid_the_check(monkeypatch)
    second, _ = open_encoder(settings(folder, cache))
    assert second.verdict is not None and second.backend.name == "gigatoken"
    assert "(stored verdict)" in second.tokenizer_description
    assert not second.model.tokenizer_ref.loaded
    assert second.unk_id == first.unk_id and second.median_token_length == first.median_token_length
    np.testing.assert_array_equal(second.encode(TEXTS), expected)


def test_without_reuse_every_start_checks(folder, tmp_path):
    cache = tmp_path / "cache"
    open_encoder(settings(folder, cache))
    again, _ = open_encoder(settings(folder, cache, prepared=False))
    assert again.verdict is None and again.model.tokenizer_ref.loaded


def test_a_changed_tokenizer_file_invalidates_the_verdict(folder, tmp_path):
    cache = tmp_path / "cache"
    first, _ = open_encoder(settings(folder, cache))
    key = prepared.Key.of(folder / "tokenizer.json", choice="auto", max_length=first.max_length, extra_texts=None)
    assert prepared.find(folder, key, cache)[0] is not None

    # the same tokenizer, other bytes: the verdict vouches for bytes, so it no longer applies
    tok = folder / "tokenizer.json"
    tok.write_text(json.dumps(json.loads(tok.read_text()), indent=1))
    changed = prepared.Key.of(tok, choice="auto", max_length=first.max_length, extra_texts=None)
    verdict, why = prepared.find(folder, changed, cache)
    assert verdict is None and why == "no verdict stored"  # another sha256: another file name in the cache
    again, _ = open_encoder(settings(folder, cache))
    assert again.verdict is None and again.model.tokenizer_ref.loaded

    # a verdict in the model folder is found by name: it says what changed
    (folder / prepared.FILE_NAME).write_text(json.dumps(prepared.Verdict(
        key=key, library="gigatoken", reason="r", vocab_size=1, unk_id=None, spec={}).to_json()))
    verdict, why = prepared.find(folder, changed, None)
    assert verdict is None and "stale (tokenizer_sha256 changed)" in why


def test_a_changed_library_version_or_setting_invalidates_the_verdict(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    open_encoder(settings(folder, cache))
    real = prepared.library_versions()
    monkeypatch.setattr(prepared, "library_versions", lambda: real | {"gigatoken": real["gigatoken"] + ".post1"})
    upgraded, _ = open_encoder(settings(folder, cache))
    assert upgraded.verdict is None and upgraded.model.tokenizer_ref.loaded
    monkeypatch.undo()

    other_max, _ = open_encoder(settings(folder, cache, max_length=64))
    assert other_max.verdict is None
    extra = tmp_path / "check.txt"
    extra.write_text("one more check text\n")
    with_check_file, _ = open_encoder(settings(folder, cache, fast_path_check_file=str(extra)))
    assert with_check_file.verdict is None
    assert len(list(cache.glob("*.json"))) == 4  # one verdict per key
    for kw in ({}, {"max_length": 64}, {"fast_path_check_file": str(extra)}):
        assert open_encoder(settings(folder, cache, **kw))[0].verdict is not None, kw


def test_a_damaged_verdict_means_the_full_check_and_is_replaced(folder, tmp_path):
    cache = tmp_path / "cache"
    open_encoder(settings(folder, cache))
    (stored,) = cache.glob("*.json")
    stored.write_text('{"format": 1, "key": {"tokenizer_sha256"')
    damaged, _ = open_encoder(settings(folder, cache))
    assert damaged.verdict is None and damaged.backend.name == "gigatoken"
    assert prepared.Verdict.from_json(json.loads(stored.read_text())).library == "gigatoken"  # rewritten whole
    assert open_encoder(settings(folder, cache))[0].verdict is not None


def test_a_verdict_naming_the_reference_loads_it_lazily(folder, tmp_path):
    cache = tmp_path / "cache"
    ref, _ = open_encoder(settings(folder, cache, tokenizer="tokenizers"))
    assert not list(cache.glob("*.json")), "nothing to check with the reference chosen: nothing stored"
    key = prepared.Key.of(folder / "tokenizer.json", choice="auto", max_length=ref.max_length, extra_texts=None)
    first, _ = open_encoder(settings(folder, cache))
    kept_reference = prepared.Verdict(key=key, library="tokenizers", reason="kept by a test",
                                      vocab_size=first.model.vocab_size, unk_id=first.unk_id, spec=first.spec)
    prepared.save(kept_reference, folder, cache, into_folder=False)
    kept, _ = open_encoder(settings(folder, cache))
    assert kept.verdict is not None and kept.backend.name == "tokenizers"
    np.testing.assert_array_equal(kept.encode(TEXTS), ref.encode(TEXTS))


def test_model_prepare_writes_next_to_the_model_and_workers_use_it(folder, tmp_path):
    env_cache = tmp_path / "env-cache"
    proc = subprocess.run([sys.executable, "-m", "worker", "model", "prepare", str(folder)], capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                       "EMBED_MODEL__PREPARED_DIR": str(env_cache)})
    assert proc.returncode == 0, proc.stderr
    assert "tokenizer gigatoken" in proc.stderr, proc.stderr
    verdict = prepared.Verdict.from_json(json.loads((folder / prepared.FILE_NAME).read_text()))
    assert verdict.library == "gigatoken" and verdict.vocab_size > 0
    assert not env_cache.exists(), "a writable model folder takes the verdict"

    enc, _ = open_encoder(settings(folder, tmp_path / "unused"))
    assert enc.verdict == verdict and not enc.model.tokenizer_ref.loaded


def test_an_unwritable_model_folder_falls_back_to_the_cache_directory(folder, tmp_path):
    (folder / prepared.FILE_NAME).mkdir()  # the folder's verdict path cannot be written (root ignores chmod)
    cache = tmp_path / "cache"
    enc, _ = open_encoder(settings(folder, cache), reuse_verdict=False, into_folder=True)
    (stored,) = cache.glob("*.json")
    assert prepared.Verdict.from_json(json.loads(stored.read_text())).library == enc.backend.name
    assert open_encoder(settings(folder, cache))[0].verdict is not None


def test_nothing_writable_still_starts(folder, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    enc, _ = open_encoder(settings(folder, blocker / "cache"))  # a directory under a file: never creatable
    assert enc.verdict is None and enc.backend.name == "gigatoken"
    assert "tokenizer verdict not stored" in caplog.text


def test_reuse_builds_the_named_library(folder):
    sel = tokenizers_fast.reuse("gigatoken", "why", folder / "tokenizer.json", lambda: pytest.fail("loaded"))
    assert sel.backend.name == "gigatoken" and sel.reason == "why (stored verdict)"


def test_gemma_with_and_without_the_verdict_is_bit_identical(gemma_model, tmp_path, monkeypatch):
    """The default model's tokenizer: the stored verdict picks gigatoken, and the vectors do not change."""
    folder = gemma_model("float16")
    cache = tmp_path / "cache"
    full, _ = open_encoder(settings(folder, cache))
    texts = TEXTS + ["<start_of_turn>user\nhi<end_of_turn>", "rare \U0002a6d6 ext-B", "tab\tand  spaces"]
    expected = full.encode(texts)
    forbid_the_check(monkeypatch)
    fast, _ = open_encoder(settings(folder, cache))
    assert fast.backend.name == full.backend.name == "gigatoken"
    assert not fast.model.tokenizer_ref.loaded
    np.testing.assert_array_equal(fast.encode(texts), expected)
