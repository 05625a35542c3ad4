"""Peak memory from the settings, against the memory limit: start-up refuses what cannot fit, in one line.

Why a module of its own: a pod over its memory limit is OOM-killed mid-batch, over and over, on the same
backlog; the settings that decide its peak (the model, the batch and prefetch bounds, chunking, the output
format, the process count) are all known at start. So the worker adds them up before it loads anything and
refuses, with exit code 2 and one line naming the settings, a combination whose estimated peak exceeds the limit:
`EMBED_MEMORY_LIMIT_MB` when set (0 = no check), else its cgroup's (v2 `memory.max`, v1 `memory.limit_in_bytes`,
the smallest on the path up to the root).

The estimate (every term a bound the worker enforces, each constant calibrated by
`tests/faults/test_memory_limit.py` on the gemma-like model in a memory cgroup; docs/reliability.md):

    pod = files + tokenizer + K x process (+ a supervisor's own memory when K > 1)
    process = base + prefetch + batch + part + outputs in flight (+ the fast path's piece cache where it runs)

- files: the page cache a pod is charged for: the model's table, all of it (once it has touched every row), its
  tokenizer.json, the libraries;
- tokenizer: the loaded tokenizer(s), a multiple of `tokenizer.json`'s size (it is loaded once per pod: the
  children of `--processes K` share it copy-on-write); with chunking on, the reference tokenizer too (the chunker's,
  also loaded once and shared);
- prefetch: librdkafka's queue (`EMBED_BATCH__MAX_PREFETCH_KBYTES`) plus the fetches on their way;
- batch: what one `consume` returns, held as Python bytes: at most `MAX_MESSAGES` x `MAX_BYTES`, and no more
  than the prefetch it is taken from;
- part: a batch is encoded and produced in parts of at most `EMBED_BATCH__MAX_KBYTES` (`input_parts`): a part's
  texts, chunks, vectors and output records, a multiple of its input (its outputs counted from the chunk size);
- the fast path's piece cache (`EMBED_MODEL__FAST_PATH_CACHE_MB`) where the fast path runs (not with gigatoken);
- outputs in flight: up to `MAX_IN_FLIGHT_BATCHES` parts' outputs in the producer's queue (librdkafka's copy),
  never more than that queue's bound (`queue.buffering.max.kbytes`, 64 MiB);
- and start-up's own peak, which comes before any of the batches: parsing the tokenizer (the load-time check
  holds the reference tokenizer, the fast library's and the garbage of parsing) — the pod needs the larger of the
  two.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from worker.kafka_clients import producer_queue_kbytes

if TYPE_CHECKING:
    from worker.settings import Settings

log = logging.getLogger(__name__)

MIB = 1024 * 1024
UNLIMITED = 1 << 60  # cgroup v1 says "no limit" with ~2**63 rounded to pages

# Calibration (tests/faults/test_memory_limit.py, docs/reliability.md "Memory limit"): measured on the gemma-like
# model (Gemma 3's 33 MB tokenizer.json, 262,145 x 768 float16 table) in a cgroup v1 memory cgroup.
LIBRARIES = 48 * MIB  # the page cache of the shared libraries the processes map (numpy, scipy, librdkafka, ...)
BASE_PROCESS = 80 * MIB  # interpreter, numpy, scipy, librdkafka, threads: a small model's whole process
TOKENIZER_FACTOR = 4.5  # the loaded fast tokenizer (and the encoder's state) per byte of tokenizer.json
REFERENCE_FACTOR = 3.0  # the reference tokenizer, kept with chunking on (the chunker's), per byte of tokenizer.json
LOAD_FACTOR = 16.0  # a process while loading: both tokenizers and the garbage of parsing, per byte of tokenizer.json
SUPERVISOR = 40 * MIB  # a supervisor's own pages besides the shared model (K > 1)
INPUT_FACTOR = 3.0  # a part's input held as bytes, decoded JSON and text (and chunk texts)
RECORD_OVERHEAD = 1024  # an output record's Python objects besides its value: headers, key, the record
CHUNK_BYTES_PER_UNIT = 5  # bytes of text per word (words) or token (tokens): few bytes = many chunks


class HasValue(Protocol):
    def value(self) -> bytes | None: ...
    def error(self) -> object: ...


M = TypeVar("M", bound=HasValue)


def input_parts(msgs: Sequence[M], max_bytes: int) -> Iterator[list[M]]:
    """Consecutive parts of a batch, each at most `max_bytes` of values (a bigger message is a part alone)."""
    part: list[M] = []
    size = 0
    for msg in msgs:
        v = msg.value() if msg.error() is None else None
        n = len(v) if v is not None else 0
        if part and size + n > max_bytes:
            yield part
            part, size = [], 0
        part.append(msg)
        size += n
    if part:
        yield part


# ---- the limit ----

def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """This process's memory limit in bytes from its cgroup (v2 or v1), the smallest on the path to the root;
    None when there is none (or no cgroup file system to read)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    base = Path(root)
    for line in lines:  # v1: "<id>:memory[,...]:/path"
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return _smallest(base / "memory", path, ("memory.limit_in_bytes",))
    if (base / "cgroup.controllers").exists():
        for line in lines:  # v2: "0::/path"
            if line.startswith("0::"):
                return _smallest(base, line[3:], ("memory.max",))
    return None


def _smallest(mount: Path, path: str, names: tuple[str, ...]) -> int | None:
    """The smallest limit from the process's cgroup up to the mount; a cgroup path that is not there (a container
    sees its own cgroup at the mount) is read at the mount."""
    here = mount / path.strip("/")
    if not here.is_dir():
        here = mount
    limits = []
    while True:
        for name in names:
            try:
                text = (here / name).read_text().strip()
            except OSError:
                continue
            if text != "max" and text.isdigit() and int(text) < UNLIMITED:
                limits.append(int(text))
        if here == mount or mount not in here.parents:
            break
        here = here.parent
    return min(limits) if limits else None


# ---- the estimate ----

@dataclass(frozen=True)
class Estimate:
    files: int
    tokenizer: int
    processes: int
    per_process: dict[str, int]
    supervisor: int
    load: int = 0  # start-up's peak, before any batch

    @property
    def process(self) -> int:
        return sum(self.per_process.values())

    @property
    def total(self) -> int:
        steady = self.files + self.tokenizer + self.supervisor + self.processes * self.process
        return max(steady, self.load)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / MIB:.0f}" for k, v in self.per_process.items() if v)
        sup = f" + supervisor {self.supervisor / MIB:.0f}" if self.supervisor else ""
        return (f"files {self.files / MIB:.0f} + tokenizer {self.tokenizer / MIB:.0f}{sup} + {self.processes} x "
                f"process {self.process / MIB:.0f} ({parts}) MiB; loading {self.load / MIB:.0f} MiB")


def table_dim(table: Path) -> int | None:
    """The embedding dimension from a safetensors header (the widest 2-D tensor), without reading the data."""
    try:
        with open(table, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(n, 1 << 24)))
    except (OSError, ValueError, struct.error):
        return None
    dims = [v["shape"][1] for k, v in header.items() if k != "__metadata__" and len(v.get("shape", [])) == 2]
    return max(dims) if dims else None


def output_bytes(s: Settings, dim: int) -> int:
    """One output value's bytes (the vector dominates); with the payload text, a chunk's text too."""
    from worker.settings import OutputFormat

    fmt = s.output.format
    if fmt == OutputFormat.json:
        per = 8 if s.output.schema_envelope and s.output.envelope_vector == "float" else 11  # "-0.01234567,"
        size = dim * per + 512
    elif fmt in (OutputFormat.avro, OutputFormat.protobuf):
        size = dim * (4 if s.output.envelope_vector == "float" else 8) + 256
    else:
        size = dim * {"float32": 4, "float16": 2, "int8": 1}[s.output.binary_dtype or "float32"] + 64
    if s.output.payload_text:
        size += chunk_text_bytes(s) if s.chunking.mode != "off" else 4096
    return size


def chunk_text_bytes(s: Settings) -> int:
    return max(64, s.chunking.size * CHUNK_BYTES_PER_UNIT)


def fast_path_cache(s: Settings) -> int:
    """The fast path's piece cache a process may fill (`FAST_PATH_CACHE_MB`), where the fast path runs: `on`, or
    `auto` in front of the reference tokenizer (`tokenizers` named, or `auto` without gigatoken installed). Not
    counted: `auto` where gigatoken is installed but fails its self-check at load (the reference runs then)."""
    m = s.model
    if m.fast_path == "on" or (m.fast_path == "auto" and (
            m.tokenizer == "tokenizers" or (m.tokenizer == "auto" and importlib.util.find_spec("gigatoken") is None))):
        return m.fast_path_cache_mb * MIB
    return 0


def estimate(s: Settings, processes: int, table_bytes: int, tokenizer_bytes: int, dim: int) -> Estimate:
    b = s.batch
    max_msg = s.input.max_bytes
    fetch = max(max_msg + 4096, MIB)  # kafka_clients: max.partition.fetch.bytes
    prefetch = b.max_prefetch_kbytes * 1024 + 2 * fetch
    batch = min(b.max_messages * max_msg, prefetch)
    part_in = min(batch, max(b.max_kbytes * 1024, max_msg))
    if s.chunking.mode != "off":  # every chunk an output; a document vector per input on top
        outputs = part_in // chunk_text_bytes(s) + (b.max_messages if s.chunking.document_vector else 0)
    else:
        outputs = b.max_messages
    out = output_bytes(s, dim)
    part = int(INPUT_FACTOR * part_in) + outputs * (out + 4 * dim + RECORD_OVERHEAD)
    in_flight = min(b.max_in_flight_batches * outputs * out, producer_queue_kbytes(s) * 1024)
    supervised = processes > 1 or s.processing_guarantee.value == "exactly_once"  # supervisor.supervise
    factor = TOKENIZER_FACTOR + (REFERENCE_FACTOR if s.chunking.mode != "off" else 0.0)
    per_process = {"base": BASE_PROCESS, "prefetch": prefetch, "batch": batch, "part": part,
                   "outputs in flight": in_flight, "fast-path cache": fast_path_cache(s)}
    return Estimate(files=table_bytes + tokenizer_bytes + LIBRARIES, tokenizer=int(factor * tokenizer_bytes),
                    processes=processes, per_process=per_process, supervisor=SUPERVISOR if supervised else 0,
                    load=BASE_PROCESS + int(LOAD_FACTOR * tokenizer_bytes))


def memory_limit(s: Settings) -> tuple[int | None, str]:
    """(bytes, where it comes from); None when unknown or the check is off."""
    if s.memory_limit_mb is not None:
        return (s.memory_limit_mb * MIB or None), "EMBED_MEMORY_LIMIT_MB"
    return cgroup_memory_limit(), "the cgroup's memory limit"


def check(s: Settings, processes: int) -> Estimate | None:
    """Refuse (SettingsError, one line) settings whose estimated peak exceeds the memory limit; the estimate."""
    from worker.model import model_files, resolve_model_path
    from worker.settings import SettingsError

    limit, source = memory_limit(s)
    if limit is None:
        return None
    files = model_files(resolve_model_path(s.model.path, s.model.name))
    dim = s.model.dimensions or table_dim(files.table) or 768
    est = estimate(s, processes, files.table.stat().st_size, files.tokenizer.stat().st_size, dim)
    log.info("memory estimate", extra={"estimate_mib": round(est.total / MIB), "limit_mib": round(limit / MIB),
                                       "limit_source": source, "parts": est.describe()})
    if est.total > limit:
        raise SettingsError(
            f"memory: these settings need up to {est.total / MIB:.0f} MiB but {source} is {limit / MIB:.0f} MiB "
            f"({est.describe()}): lower EMBED_BATCH__MAX_PREFETCH_KBYTES, EMBED_BATCH__MAX_KBYTES, "
            f"EMBED_BATCH__MAX_IN_FLIGHT_BATCHES or EMBED_PROCESSES, or raise the limit "
            f"(EMBED_MEMORY_LIMIT_MB=0: no check)")
    return est

