"""Command line: `embedstream encode|run|produce|bench|dashboard` (also `python -m worker ...`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from worker import __version__

log = logging.getLogger("worker")


def _settings_epilog() -> str:
    from worker.settings import describe_settings

    rows = describe_settings()
    width = max(len(r[0]) for r in rows)
    lines = ["settings (environment variables; nested with __):"]
    for var, default, doc in rows:
        lines.append(f"  {var:<{width}}  default {default}" + (f"\n  {'':<{width}}  {doc}" if doc else ""))
    return "\n".join(lines)


def _cmd_encode(args: argparse.Namespace) -> int:
    from worker.app import open_encoder
    from worker.batch_encode import InputLineError, encode_stream, open_input
    from worker.settings import load_settings

    model = args.model or os.environ.get("EMBED_MODEL__PATH")
    if not model:
        print("encode: name a model with --model DIR (or set EMBED_MODEL__PATH)", file=sys.stderr)
        return 2
    # EMBED_MODEL__* settings (fast path, dimensions, ...) apply here too; the flags win.
    ms = load_settings().model.model_copy(update={
        "path": model if Path(model).exists() else None, "name": model,
        "max_length": None if args.max_length == 0 else args.max_length})
    encoder, _ = open_encoder(ms)
    npy = args.output if args.output and args.output.endswith(".npy") else None
    sink = sys.stdout.buffer if not args.output or npy else open(args.output, "wb")
    source = open_input(args.input)
    try:
        n = encode_stream(encoder, source, sink, batch_size=args.batch_size, npy_path=npy,
                          text_field=args.text_field, id_field=args.id_field)
    except InputLineError as e:
        print(f"encode: {args.input}: {e}", file=sys.stderr)
        return 1
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        if sink is not sys.stdout.buffer:
            sink.close()
    log.info("encoded", extra={"texts": n, "dim": encoder.dim, "output": args.output or "stdout"})
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from worker.memory_budget import check
    from worker.settings import load_settings
    from worker.supervisor import parse_processes, supervise

    settings = load_settings()
    processes = args.processes or settings.processes
    check(settings, parse_processes(processes))  # settings whose peak cannot fit the memory limit: exit 2
    return supervise(processes, settings)


def _cmd_produce(args: argparse.Namespace) -> int:
    from worker.produce import produce_texts, sample_sentences

    bootstrap = args.bootstrap or os.environ.get("EMBED_KAFKA__BOOTSTRAP_SERVERS", "localhost:9092")
    topic = args.topic or os.environ.get("EMBED_INPUT_TOPIC", "texts")
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
        n = produce_texts(bootstrap, topic, iter(texts), fmt=args.format, rate=args.rate, id_prefix=args.id_prefix)
    else:
        n = produce_texts(bootstrap, topic, sample_sentences(args.count, seed=args.seed), fmt=args.format,
                          rate=args.rate, id_prefix=args.id_prefix)
    print(f"produced {n} messages to {topic} on {bootstrap}", file=sys.stderr)
    return 0


def _cmd_model_prepare(args: argparse.Namespace) -> int:
    """Run the load-time checks once and store their verdict next to the model, so that workers start without
    them (worker.prepared); also compile the pooling kernel into numba's cache where it can write one."""
    import time

    from worker.app import open_encoder
    from worker.settings import load_settings

    t0 = time.perf_counter()
    ms = load_settings().model.model_copy(update={"path": args.dir})
    encoder, name = open_encoder(ms, reuse_verdict=False, into_folder=True)
    compiled = encoder.pooler.compile_now() if encoder.pooler.wants_compiled else 0.0
    print(f"model prepare: {name}: tokenizer {encoder.tokenizer_description}; fast path {encoder.fast_path_status}; "
          f"pooling {encoder.pooler.status} ({compiled:.1f} s); {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from worker.bench import main as bench_main

    return bench_main(args)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    if args.dashboard_command == "check":
        from worker.dashboard.check import main as check_main

        return check_main(args)
    from worker.dashboard.render import main as render_main

    return render_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embedstream", description="Kafka worker that turns texts into static embeddings.")
    p.add_argument("--version", action="version", version=f"embedstream {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("encode", help="encode a file of texts with no broker (JSON lines or plain lines)")
    e.add_argument("--model", help="Model2Vec folder or hub id (default: EMBED_MODEL__PATH)")
    e.add_argument("--input", "-i", default="-", help="input file, - for stdin (default)")
    e.add_argument("--output", "-o", help="output file: .npy for a float32 matrix, else JSON lines (default stdout)")
    e.add_argument("--batch-size", type=int, default=2048)
    e.add_argument("--max-length", type=int, default=512, help="token limit per text; 0 = no limit")
    e.add_argument("--text-field", default="text")
    e.add_argument("--id-field", default="id")
    e.set_defaults(func=_cmd_encode)

    r = sub.add_parser("run", help="run the Kafka worker (configured by EMBED_* environment variables)",
                       epilog=_settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--processes", default=None,
                   help="consumer processes in this container: a number or auto (one per CPU); "
                        "default EMBED_PROCESSES or 1")
    r.set_defaults(func=_cmd_run)

    pr = sub.add_parser("produce", help="send sample texts (or a file's lines) to the input topic")
    pr.add_argument("--bootstrap", help="default EMBED_KAFKA__BOOTSTRAP_SERVERS or localhost:9092")
    pr.add_argument("--topic", help="default EMBED_INPUT_TOPIC or texts")
    pr.add_argument("--count", type=int, default=1000)
    pr.add_argument("--file", help="send this file's non-empty lines instead of generated sentences")
    pr.add_argument("--format", choices=["json", "text"], default="json")
    pr.add_argument("--rate", type=float, default=0.0, help="messages per second (0 = as fast as possible)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--id-prefix", default="msg", help="ids (and keys) are PREFIX-1 ... PREFIX-N (default msg)")
    pr.set_defaults(func=_cmd_produce)

    m = sub.add_parser("model", help="model folder tools")
    msub = m.add_subparsers(dest="model_command", required=True)
    mp = msub.add_parser("prepare", help="check the tokenizer once and store the verdict in the folder (or the "
                         "cache directory if read-only), so workers start without loading the reference tokenizer")
    mp.add_argument("dir", help="the Model2Vec folder (EMBED_MODEL__* settings apply, as in run)")
    mp.set_defaults(func=_cmd_model_prepare)

    b = sub.add_parser("bench", help="benchmarks: encoder, pipeline")
    from worker.bench import add_arguments

    add_arguments(b)
    b.set_defaults(func=_cmd_bench)

    d = sub.add_parser("dashboard", help="the Grafana dashboard without Grafana (needs the dashboard extra)")
    dsub = d.add_subparsers(dest="dashboard_command", required=True)
    dr = dsub.add_parser("render", help="draw every panel from a Prometheus into one PNG")
    from worker.dashboard.render import add_arguments as add_render_arguments

    add_render_arguments(dr)
    dr.set_defaults(func=_cmd_dashboard)
    dc = dsub.add_parser("check", help="run every query against a Prometheus; exit 1 if one has no data")
    from worker.dashboard.check import add_arguments as add_check_arguments

    add_check_arguments(dc)
    dc.set_defaults(func=_cmd_dashboard)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from worker.logs import setup_logging

    setup_logging(os.environ.get("EMBED_LOG__LEVEL", "INFO").upper(), os.environ.get("EMBED_LOG__FORMAT", "auto"))
    from confluent_kafka import KafkaException

    from worker.model import ModelError
    from worker.settings import SettingsError

    try:
        return int(args.func(args) or 0)
    except (SettingsError, ModelError) as e:
        print(f"embedstream {args.command}: {e}", file=sys.stderr)
        return 2
    except KafkaException as e:  # e.g. a librdkafka property that does not exist or does not fit
        print(f"embedstream {args.command}: Kafka client settings rejected: {e.args[0].str()}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
