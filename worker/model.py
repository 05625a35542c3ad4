"""Load a Model2Vec folder: the embedding table (memory-mapped), the tokenizer and the config.

The table is mapped read-only straight from `model.safetensors`, in the dtype it is stored in, so that
every worker process on a host shares one copy in the page cache and start-up reads no more than it
needs. Every way a model folder can be wrong fails here, at load, with the file and the problem named.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import struct
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from tokenizers import Tokenizer

from worker.fastpath import light_spec

if TYPE_CHECKING:
    from worker.prepared import Verdict

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
# sentence-transformers' StaticEmbedding layout, which model2vec also reads.
ST_SUBFOLDER = "0_StaticEmbedding"

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class ModelError(Exception):
    """A model cannot be found or loaded; the message names the file or setting and the problem."""


class TokenizerRef:
    """The reference tokenizer (`tokenizers`, what model2vec runs), released when a faster library took over and
    nothing else needs it: Gemma 3's holds ~280 MB of native memory per process. Loaded again from its file, on
    first use, if something asks for it afterwards."""

    def __init__(self, tokenizer: Tokenizer | None, path: Path) -> None:
        self._tokenizer = tokenizer
        self.path = path
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._tokenizer is not None

    def get(self) -> Tokenizer:
        with self._lock:
            if self._tokenizer is None:
                log.info("reloading the reference tokenizer", extra={"path": str(self.path)})
                self._tokenizer = Tokenizer.from_file(str(self.path))
                self._tokenizer.no_truncation()
                self._tokenizer.no_padding()
            return self._tokenizer

    def release(self) -> None:
        """Drop it and give its native memory back to the system (glibc keeps freed heap pages otherwise)."""
        with self._lock:
            self._tokenizer = None
        gc.collect()
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


@dataclass(frozen=True)
class Model:
    """A loaded Model2Vec model. `table` is a read-only memory map: [rows, dim] in the stored dtype."""

    name: str
    path: Path
    table: np.ndarray
    tokenizer_ref: TokenizerRef
    config: dict[str, Any]
    weights: np.ndarray | None = None
    mapping: np.ndarray | None = None
    table_file: Path = field(default_factory=Path)
    # tokenizer.json without its vocabulary and merges (normalizer, pre-tokenizer, model type and flags,
    # added tokens): what the encoder and the fast path's analysis read, without serializing the tokenizer
    tokenizer_spec: dict[str, Any] = field(default_factory=dict)
    tokenizer_file: Path = field(default_factory=Path)
    vocab_size: int = 0  # tokens, added tokens included

    @property
    def tokenizer(self) -> Tokenizer:
        """The reference tokenizer (loaded again if it was released)."""
        return self.tokenizer_ref.get()

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    @property
    def dtype(self) -> str:
        return np.dtype(self.table.dtype).name

    @property
    def table_bytes(self) -> int:
        return int(self.table.nbytes)

    def with_dimensions(self, n: int | None) -> Model:
        """The first `n` columns of a PCA-ordered table (model2vec's `dimensionality=n`): a view, no copy."""
        if n is None or n == self.dim:
            return self
        if not 1 <= n <= self.dim:
            raise ModelError(f"{self.path}: EMBED_MODEL__DIMENSIONS={n} but the model has {self.dim} dimensions")
        return replace(self, table=self.table[:, :n])

    def check_dim(self, expected: int | None) -> None:
        """Stop start-up when a configured dimension does not match the model's."""
        if expected is not None and expected != self.dim:
            raise ModelError(
                f"{self.path}: output dimension is {self.dim} but EMBED_MODEL__EXPECTED_DIM is {expected}; "
                "point EMBED_MODEL__PATH at the intended model or change the expected dimension"
            )


def read_safetensors_index(path: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """Parse a safetensors header: (offset of the data section, {tensor name: {dtype, shape, data_offsets}})."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ModelError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER_BYTES:
                raise ModelError(f"{path}: not a safetensors file (header length {n} is implausible)")
            raw = f.read(n)
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: safetensors header is not valid JSON ({e})") from None
    header.pop("__metadata__", None)
    return 8 + n, header


def map_tensor(path: Path, data_start: int, name: str, info: dict[str, Any]) -> np.ndarray:
    """Memory-map one tensor read-only, with the dtype and shape its header declares."""
    dtype_name = info.get("dtype")
    dtype = _SAFETENSORS_DTYPES.get(str(dtype_name))
    if dtype is None:
        raise ModelError(
            f"{path}: tensor '{name}' has dtype {dtype_name}, which this worker does not load "
            f"(supported: {', '.join(_SAFETENSORS_DTYPES)})"
        )
    shape = tuple(int(s) for s in info.get("shape", []))
    begin, end = (int(x) for x in info.get("data_offsets", (0, 0)))
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if end - begin != expected:
        raise ModelError(f"{path}: tensor '{name}' declares shape {shape} but holds {end - begin} bytes")
    if os.path.getsize(path) < data_start + end:
        raise ModelError(f"{path}: file is truncated (tensor '{name}' ends past the end of the file)")
    if expected == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)


def _read_json(path: Path, raw: bytes | None = None) -> dict[str, Any]:
    try:
        if raw is None:
            raw = path.read_bytes()
        data = orjson.loads(raw)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except orjson.JSONDecodeError:
        try:  # orjson's messages name no line; the standard library's do
            json.loads((raw or b"").decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{path}: not valid JSON ({e})") from None
        raise ModelError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _model_folder(path: Path) -> Path:
    if not path.exists():
        raise ModelError(f"{path}: model folder not found (set EMBED_MODEL__PATH to a Model2Vec folder)")
    if not path.is_dir():
        raise ModelError(f"{path}: not a folder (EMBED_MODEL__PATH must name a Model2Vec folder)")
    if not (path / MODEL_FILE).exists() and (path / ST_SUBFOLDER / MODEL_FILE).exists():
        return path / ST_SUBFOLDER
    return path


@dataclass(frozen=True)
class ModelFiles:
    """Where a Model2Vec folder's three files are (the sentence-transformers layout included)."""

    folder: Path
    table: Path
    tokenizer: Path
    config: Path


def model_files(path: str | os.PathLike[str]) -> ModelFiles:
    """The files of a Model2Vec folder, each checked to exist."""
    folder = _model_folder(Path(path))
    table_file = folder / MODEL_FILE
    tok_file = folder / TOKENIZER_FILE
    if not tok_file.exists() and (folder.parent / TOKENIZER_FILE).exists():
        tok_file = folder.parent / TOKENIZER_FILE
    cfg_file = folder / CONFIG_FILE
    if not cfg_file.exists() and (folder.parent / CONFIG_FILE).exists():
        cfg_file = folder.parent / CONFIG_FILE
    for f in (table_file, tok_file, cfg_file):
        if not f.exists():
            raise ModelError(f"{f}: file not found (a Model2Vec folder holds {MODEL_FILE}, {TOKENIZER_FILE}, "
                             f"{CONFIG_FILE})")
    return ModelFiles(folder, table_file, tok_file, cfg_file)


def _load_tokenizer(tok_file: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """The reference tokenizer and its light spec, from one read of the file."""
    raw = tok_file.read_bytes()  # read once: parsed here for a clear error and the spec, then by tokenizers
    spec = _read_json(tok_file, raw)  # a clear JSON error beats the tokenizer library's
    try:
        tokenizer = Tokenizer.from_buffer(raw)
    except Exception as e:  # the tokenizers library raises plain Exception subclasses
        raise ModelError(f"{tok_file}: not a Hugging Face tokenizer ({e})") from None
    del raw
    return tokenizer, light_spec(spec)  # the 33 MB of a large vocabulary stay in the tokenizer only


def load_model(path: str | os.PathLike[str], name: str | None = None, *, verdict: Verdict | None = None) -> Model:
    """Load and validate a Model2Vec folder (model.safetensors, tokenizer.json, config.json).

    With a `verdict` (worker.prepared: a stored result of the tokenizer check for exactly this tokenizer file)
    the reference tokenizer is not loaded: its spec and vocabulary size come from the verdict, and it is loaded
    from its file only if something asks for it."""
    files = model_files(path)
    table_file, tok_file = files.table, files.tokenizer
    config = _read_json(files.config)
    tokenizer: Tokenizer | None = None
    if verdict is None:
        tokenizer, spec = _load_tokenizer(tok_file)
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    else:
        spec, vocab = verdict.spec, verdict.vocab_size

    data_start, index = read_safetensors_index(table_file)
    emb_name = "embeddings" if "embeddings" in index else "embedding.weight" if "embedding.weight" in index else None
    if emb_name is None:
        raise ModelError(
            f"{table_file}: no tensor named 'embeddings' (found: {', '.join(sorted(index)) or 'none'})"
        )
    table = map_tensor(table_file, data_start, emb_name, index[emb_name])
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise ModelError(f"{table_file}: tensor '{emb_name}' must be 2-D [rows, dim], found shape {table.shape}")
    if table.dtype not in (np.float32, np.float16, np.int8, np.float64):
        raise ModelError(f"{table_file}: embedding dtype {table.dtype} is not float32, float16, int8 or float64")

    weights = mapping = None
    if "weights" in index:
        weights = np.asarray(map_tensor(table_file, data_start, "weights", index["weights"]))
        if weights.shape != (vocab,):
            raise ModelError(
                f"{table_file}: tensor 'weights' has shape {weights.shape}, expected ({vocab},) "
                f"= the tokenizer's vocabulary size"
            )
    if "mapping" in index:
        mapping = np.asarray(map_tensor(table_file, data_start, "mapping", index["mapping"])).astype(np.int64)
        if mapping.shape != (vocab,):
            raise ModelError(
                f"{table_file}: tensor 'mapping' has shape {mapping.shape}, expected ({vocab},) "
                f"= the tokenizer's vocabulary size"
            )
        if mapping.size and (mapping.min() < 0 or mapping.max() >= table.shape[0]):
            raise ModelError(f"{table_file}: tensor 'mapping' points outside the {table.shape[0]} table rows")
    elif table.shape[0] != vocab:
        raise ModelError(
            f"{table_file}: table has {table.shape[0]} rows but {tok_file.name} has {vocab} tokens "
            "(and there is no 'mapping' tensor)"
        )
    model = Model(
        name=name or str(config.get("model_name") or Path(path).name),
        path=Path(path),
        table=table,
        tokenizer_ref=TokenizerRef(tokenizer, tok_file),
        config=config,
        weights=weights,
        mapping=mapping,
        table_file=table_file,
        tokenizer_spec=spec,
        tokenizer_file=tok_file,
        vocab_size=int(vocab),
    )
    log.info(
        "model loaded",
        extra={"model": model.name, "path": str(path), "dim": model.dim, "vocab_size": vocab,
               "dtype": model.dtype, "table_bytes": model.table_bytes},
    )
    return model


def resolve_model_path(path: str | None, name: str) -> Path:
    """A local folder for the model: `path` if set, else `name` if it is a folder, else the hub."""
    if path:
        return Path(path)
    if Path(name).is_dir() or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return Path(name).expanduser()  # a path, not a hub id (owner/name): load_model names what is wrong
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(
            f"model '{name}' is not a local folder and huggingface_hub is not installed: "
            "set EMBED_MODEL__PATH to a local Model2Vec folder (or pip install 'embedstream[hub]')"
        ) from None
    patterns = [MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE, f"{ST_SUBFOLDER}/*", "modules.json"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached: fall through to the network
        pass
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(
            f"model '{name}' could not be fetched from the Hugging Face hub ({type(e).__name__}: {reason[:200]}): "
            "set EMBED_MODEL__PATH to a local Model2Vec folder"
        ) from None
