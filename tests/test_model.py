"""Model loading: memory mapping, stored dtypes, and a clear error for every broken folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import save_file

from worker.model import ModelError, load_model, resolve_model_path


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_table_is_memory_mapped_in_stored_dtype(model_factory):
    for dtype in ("float32", "float16", "int8"):
        model = load_model(model_factory("wordpiece", dtype=dtype))
        assert isinstance(model.table, np.memmap)
        assert model.table.dtype == np.dtype(dtype)
        assert not model.table.flags.writeable


def test_reports_dimension_and_checks_expected(model_factory):
    model = load_model(model_factory("bpe", dim=24))
    assert model.dim == 24
    model.check_dim(24)
    model.check_dim(None)
    with pytest.raises(ModelError, match="output dimension is 24 but EMBED_MODEL__EXPECTED_DIM is 768"):
        model.check_dim(768)


@pytest.mark.parametrize("missing", ["model.safetensors", "tokenizer.json", "config.json"])
def test_missing_file_is_named(small_model, tmp_path, missing):
    folder = copy_model(small_model, tmp_path / "m")
    (folder / missing).unlink()
    with pytest.raises(ModelError, match=f"{missing}: file not found"):
        load_model(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        load_model(tmp_path / "nope")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_unreadable_json_is_named(small_model, tmp_path, name):
    folder = copy_model(small_model, tmp_path / "m")
    (folder / name).write_text("{not json")
    with pytest.raises(ModelError, match=f"{name}: not valid JSON"):
        load_model(folder)


def test_wrong_tensor_name(small_model, tmp_path):
    folder = copy_model(small_model, tmp_path / "m")
    save_file({"vectors": np.zeros((4, 4), np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="no tensor named 'embeddings' \\(found: vectors\\)"):
        load_model(folder)


def test_wrong_tensor_shape(small_model, tmp_path):
    folder = copy_model(small_model, tmp_path / "m")
    save_file({"embeddings": np.zeros((600,), np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="must be 2-D"):
        load_model(folder)


def test_vocab_size_mismatch(small_model, tmp_path):
    folder = copy_model(small_model, tmp_path / "m")
    save_file({"embeddings": np.zeros((17, 32), np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="table has 17 rows but tokenizer.json has 600 tokens"):
        load_model(folder)


def test_bad_weights_and_mapping(small_model, tmp_path):
    folder = copy_model(small_model, tmp_path / "m")
    table = np.zeros((600, 32), np.float32)
    save_file({"embeddings": table, "weights": np.ones(5, np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="'weights' has shape \\(5,\\), expected \\(600,\\)"):
        load_model(folder)
    save_file({"embeddings": table[:10], "mapping": np.full(600, 99, np.int64)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="'mapping' points outside the 10 table rows"):
        load_model(folder)


def test_truncated_and_garbage_safetensors(small_model, tmp_path):
    folder = copy_model(small_model, tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        load_model(folder)
    (folder / "model.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(ModelError, match="not a safetensors file"):
        load_model(folder)


def test_unsupported_dtype(small_model, tmp_path):
    folder = copy_model(small_model, tmp_path / "m")
    path = folder / "model.safetensors"
    header = json.dumps({"embeddings": {"dtype": "BF16", "shape": [600, 32], "data_offsets": [0, 600 * 32 * 2]}})
    raw = header.encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(600 * 32 * 2))
    with pytest.raises(ModelError, match="dtype BF16"):
        load_model(folder)


def test_not_a_tokenizer(small_model, tmp_path):
    folder = copy_model(small_model, tmp_path / "m")
    (folder / "tokenizer.json").write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ModelError, match="tokenizer.json: not a Hugging Face tokenizer"):
        load_model(folder)


def test_hub_name_offline_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match="set EMBED_MODEL__PATH to a local Model2Vec folder"):
        resolve_model_path(None, "tss-deposium/gemma-deposium-768d")


def test_local_path_wins(small_model):
    assert resolve_model_path(str(small_model), "some/hub-id") == small_model
    assert resolve_model_path(None, str(small_model)) == small_model


CHILD = textwrap.dedent(
    """
    import sys
    from worker.model import load_model
    m = load_model(sys.argv[1])
    float(m.table.sum(dtype="float64"))  # touch every page of the table
    target = str(m.table_file)
    stats, current = {}, None
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and len(head[1]) == 4:  # a mapping's header (anonymous: no path)
            current = head[5] if len(head) >= 6 and head[-1] == target else None
            continue
        if current and len(head) == 3 and head[2] == "kB":
            stats[head[0].rstrip(":")] = stats.get(head[0].rstrip(":"), 0) + int(head[1]) * 1024
    print(stats.get("Rss", 0), stats.get("Pss", 0), stats.get("Private_Dirty", 0), stats.get("Anonymous", 0),
          flush=True)
    sys.stdin.readline()
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_two_processes_share_one_copy_of_the_table(model_factory):
    folder = model_factory("wordpiece", dim=4096)  # 600 x 4096 float32 = 9.4 MiB
    table_bytes = 600 * 4096 * 4
    os.sync()  # a file written moments ago may still have dirty pages, which smaps counts as anonymous
    procs = []
    try:
        readings = []
        for _ in range(2):
            p = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None
            readings.append([int(x) for x in p.stdout.readline().split()])
        rss, pss, _private_dirty, anon = readings[1]
        assert rss >= table_bytes * 0.9  # the whole table is resident in the second process...
        assert pss <= rss * 0.6  # ...but counted half, because the first process maps the same pages
        # ...and no private copy: at most a few stray pages (the kernel may report a handful of anonymous or
        # dirty pages for a file written moments ago), never the table.
        assert anon <= table_bytes * 0.01
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            p.wait(timeout=30)
