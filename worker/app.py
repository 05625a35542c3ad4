"""Wires one worker process together: settings -> model -> encoder -> metrics/probes -> pipeline.

Start-up is measured here: the model load (model, tokenizer, encoder with its fast-path self-check) is logged
and exported, and so is the time from process start to the first ready /readyz.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka
from prometheus_client import CollectorRegistry

from worker import prepared
from worker.encoder import Encoder
from worker.metrics import Metrics, process_start_time
from worker.model import load_model, model_files, resolve_model_path
from worker.pipeline import Pipeline, install_signal_handlers
from worker.probes import Health, serve
from worker.settings import ModelSettings, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A built encoder, its model's name and how long loading took (model files + encoder construction)."""

    encoder: Encoder
    name: str
    seconds: float


def open_encoder(ms: ModelSettings, *, reuse_verdict: bool = True, into_folder: bool = False) -> tuple[Encoder, str]:
    """Resolve, load and check the configured model; (encoder, model name).

    The tokenizer check's verdict (worker.prepared) is reused where one is stored for exactly this tokenizer
    file, library versions and settings (`reuse_verdict`), and stored after a full check: into the model folder
    with `into_folder` (`embedstream model prepare`), else into the cache directory."""
    path = resolve_model_path(ms.path, ms.name)
    explicit_name = "name" in ms.model_fields_set or not ms.path
    check_texts = None
    if ms.fast_path_check_file:
        from worker.fastpath import read_check_file
        from worker.model import ModelError

        try:
            check_texts = read_check_file(ms.fast_path_check_file)
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"{ms.fast_path_check_file}: cannot read the fast-path check file "
                             f"(EMBED_MODEL__FAST_PATH_CHECK_FILE): {e}") from None
    files = model_files(path)
    key = verdict = None
    cache_dir = Path(ms.prepared_dir) if ms.prepared_dir else prepared.default_dir()
    if ms.tokenizer != "tokenizers" and (ms.prepared or into_folder):  # "tokenizers": nothing to check
        key = prepared.Key.of(files.tokenizer, choice=ms.tokenizer, max_length=ms.max_length,
                              extra_texts=check_texts)
        if reuse_verdict and ms.prepared:
            verdict, source = prepared.find(files.folder, key, cache_dir)
            log.info("tokenizer verdict " + ("reused" if verdict else "not reused: the full check runs"),
                     extra={"source": source})
    model = load_model(path, name=ms.name if explicit_name else None, verdict=verdict)
    model = model.with_dimensions(ms.dimensions)
    model.check_dim(ms.expected_dim)
    encoder = Encoder(model, max_length=ms.max_length, normalize=ms.normalize, fast_path=ms.fast_path,
                      fast_path_cache_mb=ms.fast_path_cache_mb, fast_path_check_texts=check_texts,
                      tokenizer=ms.tokenizer, pooling=ms.pooling, verdict=verdict)
    if key is not None and verdict is None:
        where = prepared.save(encoder.found(key), files.folder, cache_dir, into_folder=into_folder)
        if where:
            log.info("tokenizer verdict stored", extra={"path": str(where), "library": encoder.backend.name})
    return encoder, model.name


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim; elsewhere nothing).

    Loading a large tokenizer leaves most of the heap free but still mapped (the Gemma 3 tokenizer: 270 of
    420 MB): without this, the process keeps it, and forked children copy whatever of it they write to.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def load_encoder(ms: ModelSettings) -> Loaded:
    """`open_encoder`, timed and logged, then the garbage of loading returned to the kernel."""
    t0 = time.perf_counter()
    encoder, name = open_encoder(ms)
    gc.collect()
    release_free_heap()
    seconds = time.perf_counter() - t0
    log.info("encoder ready", extra={"model": name, "load_seconds": round(seconds, 3),
                                     "fast_path": encoder.fast_path_status, "library": encoder.tokenizer_description})
    return Loaded(encoder, name, seconds)


def build(settings: Settings, registry: CollectorRegistry | None = None, *, install_signals: bool = True,
          loaded: Loaded | None = None, phases: dict[str, float] | None = None) -> tuple[Pipeline, Metrics, Health]:
    """Everything one process needs, started except the loop itself. `loaded`: an encoder built already
    (by the supervisor, before it forked this process). `phases` gets the model load's seconds."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry, process_collectors=True)
    metrics.set_build(librdkafka=confluent_kafka.libversion()[0], confluent_kafka=confluent_kafka.version()[0])
    health = Health(settings.metrics.stall_timeout_s)
    # embedstream_ready reads what /readyz would answer at scrape time (it was never set before: always 0).
    metrics.ready.set_function(lambda: 1.0 if health.ready()[0] else 0.0)
    if settings.metrics.enabled:
        serve(registry, health, settings.metrics.host, settings.metrics.port)
    if loaded is None:
        loaded = load_encoder(settings.model)
        if phases is not None:
            phases["load_seconds"] = loaded.seconds
    encoder, name = loaded.encoder, loaded.name
    health.model_loaded = True
    m = encoder.model
    metrics.set_model(name=name, dim=m.dim, vocab_size=m.vocab_size, dtype=m.dtype, table_bytes=m.table_bytes,
                      fast_path=encoder.fast_path_status, tokenizer=encoder.tokenizer_description)
    metrics.model_load_seconds.set(loaded.seconds)
    metrics.update_memory()
    pipeline = Pipeline(settings, encoder, name, metrics, health)
    if encoder.release_reference():  # after the pipeline took what it needs (the chunker's own copy)
        log.info("reference tokenizer released", extra={"model": name, "library": encoder.backend.name})
    if install_signals and threading.current_thread() is threading.main_thread():
        install_signal_handlers(pipeline)
    # in this process (never in a supervisor about to fork): a thread must not be compiling across a fork
    encoder.pooler.compile_later()
    return pipeline, metrics, health


def watch_startup(metrics: Metrics, health: Health, started_at: float, stop: threading.Event,
                  phases: dict[str, float] | None = None) -> None:
    """Set the start-up gauge and log it the first time the process is ready, with where the time went:
    `phases` holds the seconds before the model load (interpreter, imports, settings) and of the load itself;
    the rest is Kafka (connect, join the group, get partitions)."""
    while not stop.wait(0.05):
        if health.ready()[0]:
            seconds = time.time() - started_at
            metrics.startup_seconds.set(seconds)
            parts = {k: round(v, 3) for k, v in (phases or {}).items()}
            if parts:
                parts["kafka_seconds"] = round(seconds - sum((phases or {}).values()), 3)
            log.info("ready", extra={"startup_seconds": round(seconds, 3), **parts})
            return


def run(settings: Settings, *, loaded: Loaded | None = None, started_at: float | None = None) -> int:
    """Run one worker process. `loaded`: an encoder built already, by the supervisor that forked this process;
    `started_at` (Unix time): when its start-up began (this process's start unless given)."""
    started_at = process_start_time() if started_at is None else started_at
    # where the start-up goes (a supervisor's child was handed its encoder: its load is the parent's)
    phases = {"before_load_seconds": time.time() - started_at} if loaded is None else {}
    pipeline, metrics, health = build(settings, loaded=loaded, phases=phases)
    stop = threading.Event()

    def refresh_memory() -> None:
        while not stop.wait(15):
            release_free_heap()  # batches leave free pages behind; a forked child's would stay private
            metrics.update_memory()

    threading.Thread(target=refresh_memory, name="memory", daemon=True).start()
    threading.Thread(target=watch_startup, args=(metrics, health, started_at, stop, phases), name="startup",
                     daemon=True).start()
    try:
        if loaded is None:
            return pipeline.run()
        return run_in_thread(pipeline)
    finally:
        stop.set()


def run_in_thread(pipeline: Pipeline) -> int:
    """The loop on its own thread, the main thread waiting for it (and taking the signals, as ever).

    In a forked child, the main thread's allocations land in the supervisor's heap: between the tokenizer's
    live objects, on pages shared copy-on-write, so each one copies a whole page (the gemma-like model: 200-215
    MB private per child after 20,000 texts). A new thread allocates from a malloc arena of its own, on fresh
    pages (150-156 MB).
    """
    result: list[int] = []
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            result.append(pipeline.run())
        except BaseException as e:  # handed to the main thread, which raises it as run() would have
            failure.append(e)

    thread = threading.Thread(target=loop, name="pipeline")
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if failure:
        raise failure[0]
    return result[0]
