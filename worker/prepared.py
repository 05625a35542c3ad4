"""The load-time tokenizer check's verdict, kept so that the next start need not run it again.

At load the encoder proves which tokenizer library may run: a faster one only where it gives the reference
(`tokenizers`) ids on the self-check corpus. That proof costs the reference's own load (Gemma 3: ~1.8 s and
~280 MB) and is a function of its inputs only: the tokenizer file's bytes, the library versions, the checking
code and corpus, and the settings that shape the corpus (library choice, max_length, extra check texts). The
verdict records those inputs (the key) and what the check found: the library, why, and the few facts the
encoder otherwise reads from the reference (vocabulary size, unknown id, the light spec). A start whose key
matches a stored verdict trusts it and never loads the reference tokenizer; any difference in the key (a
changed tokenizer file, an upgraded library, other settings) means the full check, as before, never a wrong
tokenizer.

Where verdicts live: `embedstream-prepared.json` in the model folder (written by `embedstream model prepare DIR`,
which the Dockerfile runs for a baked model), else `<cache dir>/<tokenizer sha256>-<key hash>.json` (a writable
fallback for read-only models: EMBED_MODEL__PREPARED_DIR, default ~/.cache/embedstream/prepared), which a full
check writes after every start that had to run it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "embedstream-prepared.json"
FORMAT = 1
LIBRARIES = ("tokenizers", "gigatoken", "tokie", "numpy", "embedstream")
# the code whose behaviour the verdict vouches for: a change in any of these is a change of the check
_CHECK_SOURCES = ("tokenizers_fast.py", "fastpath/verify.py", "fastpath/analysis.py", "prepared.py")


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "embedstream" / "prepared"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _code_sha256() -> str:
    h = hashlib.sha256()
    root = Path(__file__).parent
    for rel in _CHECK_SOURCES:
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Key:
    """Everything the verdict is a function of."""

    tokenizer_sha256: str
    libraries: dict[str, str]
    code: str
    choice: str
    max_length: int | None
    extra_texts_sha256: str

    @classmethod
    def of(cls, tokenizer_file: Path, *, choice: str, max_length: int | None,
           extra_texts: list[str] | None) -> Key:
        extra = hashlib.sha256("\n".join(extra_texts or []).encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return cls(file_sha256(tokenizer_file), library_versions(), _code_sha256(), choice, max_length, extra)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Verdict:
    """What the check found (and `key`, what it was a function of)."""

    key: Key
    library: str  # the backend that runs: tokenizers, gigatoken or tokie
    reason: str
    vocab_size: int
    unk_id: int | None
    spec: dict[str, Any]  # tokenizer.json without vocabulary and merges (worker.fastpath.light_spec)
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, not {FORMAT}")
        return cls(key=Key(**data["key"]), library=str(data["library"]), reason=str(data["reason"]),
                   vocab_size=int(data["vocab_size"]),
                   unk_id=None if data["unk_id"] is None else int(data["unk_id"]),
                   spec=dict(data["spec"]), created=float(data.get("created", 0)))


def _candidates(folder: Path, key: Key, cache_dir: Path | None) -> list[Path]:
    paths = [folder / FILE_NAME]
    if cache_dir is not None:
        paths.append(cache_dir / f"{key.tokenizer_sha256[:16]}-{key.digest()}.json")
    return paths


def find(folder: Path, key: Key, cache_dir: Path | None) -> tuple[Verdict | None, str]:
    """The stored verdict for exactly this key, and where it came from (or why there is none)."""
    notes = []
    for path in _candidates(folder, key, cache_dir):
        try:
            verdict = Verdict.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:  # unreadable or damaged: the full check
            notes.append(f"{path}: unreadable ({type(e).__name__}: {e})")
            continue
        if verdict.key == key:
            return verdict, str(path)
        changed = sorted(k for k, v in asdict(key).items() if asdict(verdict.key).get(k) != v)
        notes.append(f"{path}: stale ({', '.join(changed)} changed)")
    return None, "; ".join(notes) or "no verdict stored"


def save(verdict: Verdict, folder: Path, cache_dir: Path | None, *, into_folder: bool) -> Path | None:
    """Write the verdict: into the model folder when asked and writable, else into the cache directory.
    Atomic (a temporary file renamed); returns where, or None where nothing was writable (logged)."""
    data = json.dumps(verdict.to_json(), ensure_ascii=False, indent=1).encode("utf-8", "surrogatepass")
    targets = _candidates(folder, verdict.key, cache_dir)
    if not into_folder:
        targets = targets[1:]
    errors = []
    for path in targets:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".prepared-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            return path
        except OSError as e:
            errors.append(f"{path.parent}: {e.strerror or e}")
    log.warning("tokenizer verdict not stored: the next start checks again",
                extra={"reason": "; ".join(errors) or "no cache directory"})
    return None
