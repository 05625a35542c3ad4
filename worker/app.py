"""Wires one worker process together: settings -> model -> encoder -> metrics/probes -> pipeline."""

from __future__ import annotations

import logging
import threading

import confluent_kafka
from prometheus_client import CollectorRegistry

from worker.encoder import Encoder
from worker.metrics import Metrics
from worker.model import load_model, resolve_model_path
from worker.pipeline import Pipeline, install_signal_handlers
from worker.probes import Health, serve
from worker.settings import ModelSettings, Settings

log = logging.getLogger(__name__)


def open_encoder(ms: ModelSettings) -> tuple[Encoder, str]:
    """Resolve, load and check the configured model; (encoder, model name)."""
    path = resolve_model_path(ms.path, ms.name)
    explicit_name = "name" in ms.model_fields_set or not ms.path
    model = load_model(path, name=ms.name if explicit_name else None).with_dimensions(ms.dimensions)
    model.check_dim(ms.expected_dim)
    check_texts = None
    if ms.fast_path_check_file:
        from worker.fastpath import read_check_file
        from worker.model import ModelError

        try:
            check_texts = read_check_file(ms.fast_path_check_file)
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"{ms.fast_path_check_file}: cannot read the fast-path check file "
                             f"(EMBED_MODEL__FAST_PATH_CHECK_FILE): {e}") from None
    encoder = Encoder(model, max_length=ms.max_length, normalize=ms.normalize, fast_path=ms.fast_path,
                      fast_path_cache_mb=ms.fast_path_cache_mb, fast_path_check_texts=check_texts)
    return encoder, model.name


def build(settings: Settings, registry: CollectorRegistry | None = None, *,
          install_signals: bool = True) -> tuple[Pipeline, Metrics, Health]:
    """Everything one process needs, started except the loop itself."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry, process_collectors=True)
    metrics.set_build(librdkafka=confluent_kafka.libversion()[0], confluent_kafka=confluent_kafka.version()[0])
    health = Health(settings.metrics.stall_timeout_s)
    # embedstream_ready reads what /readyz would answer at scrape time (it was never set before: always 0).
    metrics.ready.set_function(lambda: 1.0 if health.ready()[0] else 0.0)
    if settings.metrics.enabled:
        serve(registry, health, settings.metrics.host, settings.metrics.port)
    encoder, name = open_encoder(settings.model)
    health.model_loaded = True
    m = encoder.model
    metrics.set_model(name=name, dim=m.dim, vocab_size=m.vocab_size, dtype=m.dtype, table_bytes=m.table_bytes,
                      fast_path=encoder.fast_path_status)
    metrics.update_memory()
    pipeline = Pipeline(settings, encoder, name, metrics, health)
    if install_signals and threading.current_thread() is threading.main_thread():
        install_signal_handlers(pipeline)
    return pipeline, metrics, health


def run(settings: Settings) -> int:
    pipeline, metrics, _ = build(settings)
    stop = threading.Event()

    def refresh_memory() -> None:
        while not stop.wait(15):
            metrics.update_memory()

    threading.Thread(target=refresh_memory, name="memory", daemon=True).start()
    try:
        return pipeline.run()
    finally:
        stop.set()
