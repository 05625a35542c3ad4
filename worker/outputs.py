"""Decoded inputs -> vectors -> outgoing records: headers, chunk records, document vectors, dead letters, size checks.

Why a module of its own: what a consumer of the output and dead-letter topics receives (which records,
keys and headers, what becomes a dead letter and why) is one contract, changed without touching how the
loop consumes, acknowledges or commits.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from confluent_kafka import Message

from worker.chunking import Chunker, document_vector
from worker.codecs import Decoded, Headers, OutputEncoder, OutputRecord, Reason, chunk_ident, dead_letter
from worker.encoder import Encoded, Encoder
from worker.metrics import Metrics
from worker.settings import SCHEMA_FORMATS, Settings

Outgoing = tuple[str, bytes | None, bytes | None, Headers]  # (topic, key, value, headers)


class OutputAssembler:
    """Builds one batch's outgoing records; counts embeddings, chunks, tokens and dead letters."""

    def __init__(self, settings: Settings, encoder: Encoder, model_name: str, metrics: Metrics,
                 max_record: int) -> None:
        self.s = settings
        self.encoder = encoder
        self.metrics = metrics
        self.registry_client: Any = None
        writer = None
        if settings.output.format in SCHEMA_FORMATS or settings.output.schema_envelope:
            from worker.schema_output import make_writer

            writer, self.registry_client = make_writer(settings, model_name, encoder.dim)
        self.outputs = OutputEncoder(settings.output, model_name, encoder.dim, writer=writer)
        self.chunker = None if settings.chunking.mode == "off" else Chunker(settings.chunking,
                                                                             encoder.model.tokenizer)
        self.dlq_max_value = settings.input.dead_letter_max_value_bytes
        self.max_record = max_record  # what one record may weigh (the producer's message.max.bytes less framing)
        self._cache_seen = (0, 0)

    def finite(self, records: list[OutputRecord], vectors: np.ndarray, bad: list[tuple[int, str, str]]
               ) -> tuple[list[OutputRecord], np.ndarray]:
        """The records whose vectors are finite in the output's element type. NaN or ±Inf (a corrupt table, or a
        sum past float32's range) has no JSON number (orjson writes null) nor any use downstream: such an input
        is dead-lettered instead (encode_error), with its other records (chunks, document vector)."""
        if not records:
            return records, vectors
        with np.errstate(over="ignore"):  # float16: what it cannot hold becomes inf
            ok = np.isfinite(vectors if self.outputs.binary != "float16" else vectors.astype(np.float16)).all(axis=1)
        if ok.all():
            return records, vectors
        broken = {records[k].source for k in np.flatnonzero(~ok).tolist()}
        bad.extend((i, Reason.ENCODE_ERROR, "the model gave a vector that is not finite (NaN or infinite values"
                    + (" in float16" if self.outputs.binary == "float16" else "") + "): is its table corrupt?")
                   for i in sorted(broken))
        keep = [k for k, r in enumerate(records) if r.source not in broken]
        return [records[k] for k in keep], vectors[keep]

    def values(self, records: list[OutputRecord], vectors: np.ndarray) -> list[bytes]:
        """The output values, in the configured format."""
        return self.outputs.values(records, vectors) if records else []

    def assemble(self, real: list[Message], records: list[OutputRecord], out_values: list[bytes],
                 values: list[bytes | None], keys: list[bytes | None], where: list[tuple[str, int, int]],
                 bad: list[tuple[int, str, str]]) -> tuple[list[Outgoing], list[OutputRecord]]:
        """The outputs then the dead letters of one batch; and the records published (those whose output
        is not too big)."""
        outgoing, too_big = self._output_records(real, records, out_values, keys, where)
        if too_big:
            outgoing = [o for o, r in zip(outgoing, records, strict=True) if r.source not in too_big]
            records = [r for r in records if r.source not in too_big]
            bad.extend((i, Reason.TOO_LARGE, "key and headers make the output larger than the producer's "
                        f"message.max.bytes ({self.max_record} bytes)") for i in sorted(too_big))
        for i, reason, text in bad:
            headers = cast(Headers, list(real[i].headers() or ()))
            dlq_value, dlq_headers = dead_letter(values[i], reason, text, *where[i], self.dlq_max_value)
            key: bytes | None = keys[i]
            if record_size(key, dlq_value, headers + dlq_headers) > self.max_record:
                # even the dead letter is too big: keep only what identifies the input (its coordinates)
                headers, key = [("error-key-and-headers-omitted", str(record_size(key, None, headers)).encode())], None
            headers.extend(dlq_headers)
            outgoing.append((self.s.dlq_topic, key, dlq_value, headers))
            self.metrics.dead_lettered.labels(reason).inc()
        return outgoing, records

    def _output_records(self, real: list[Message], records: list[OutputRecord], out_values: list[bytes],
                        keys: list[bytes | None], where: list[tuple[str, int, int]]
                        ) -> tuple[list[Outgoing], set[int]]:
        """(topic, key, value, headers) per output: the input's headers, then source-topic/-partition/-offset
        (names and per-partition values encoded once per batch), then the format's and the record's own;
        and the inputs whose key and headers make their output too big to publish."""
        out_topic = self.s.output_topic
        coords: dict[tuple[str, int], tuple[tuple[str, bytes], tuple[str, bytes]]] = {}
        binary = self.outputs.binary is not None
        # the headers added here (coordinates, model, dim, dtype, chunk fields) stay under 2 KB: the full size
        # check is needed only for inputs with headers of their own, or a large key, value or id header
        limit = self.max_record - 2048
        outgoing: list[Outgoing] = []
        too_big: set[int] = set()
        for r, value in zip(records, out_values, strict=True):
            i = r.source
            topic, part, off = where[i]
            tp = coords.get((topic, part))
            if tp is None:
                tp = coords[(topic, part)] = (("source-topic", topic.encode()),
                                              ("source-partition", str(part).encode()))
            own = real[i].headers()
            headers: Headers = list(own) if own else []  # type: ignore[arg-type]
            headers += (tp[0], tp[1], ("source-offset", str(off).encode()))
            size = len(value)
            if binary:
                extra = self.outputs.extra_headers(r.ident)
                size += len(extra[0][1])  # the id
                headers += extra
            if r.headers:
                headers += r.headers
            key = keys[i]
            if key:
                size += len(key)
            if (own or size > limit) and record_size(key, value, headers) > self.max_record:
                too_big.add(i)  # the input's own key or headers make its output too big to publish
            outgoing.append((out_topic, key, value, headers))
        return outgoing, too_big

    def embed(self, dec: Decoded) -> tuple[list[OutputRecord], np.ndarray]:
        """Encode the batch's texts (or their chunks) in one call; one output record per vector."""
        m = self.metrics
        payloads = self._payloads(dec)
        if self.chunker is None:
            enc = self.encoder.encode_batch(dec.texts)
            records = [OutputRecord(i, ident, payload=p) for i, ident, p in zip(dec.good, dec.ids, payloads,
                                                                                 strict=True)]
            if self.outputs.payload_text:
                for r, text in zip(records, dec.texts, strict=True):
                    assert r.payload is not None
                    r.payload["text"] = text
            vectors = enc.vectors
        else:
            records, vectors, enc = self._embed_chunks(dec, payloads)
        self._cache_metrics()
        tokens = int(enc.token_counts.sum())
        m.tokens.inc(tokens)
        m.batch_tokens.observe(tokens)
        m.embedded.inc(len(dec.texts))
        return records, vectors

    def _cache_metrics(self) -> None:
        """Fast-path cache counters and size, from the encoder's cumulative stats."""
        hits, misses, entries, nbytes = self.encoder.fast_path_stats()
        last_hits, last_misses = self._cache_seen
        self.metrics.cache_hits.inc(max(0, hits - last_hits))
        self.metrics.cache_misses.inc(max(0, misses - last_misses))
        self.metrics.cache_entries.set(entries)
        self.metrics.cache_bytes.set(nbytes)
        self._cache_seen = (hits, misses)

    def _payloads(self, dec: Decoded) -> list[dict[str, Any] | None]:
        if not self.outputs.wants_payload:
            return [None] * len(dec.good)
        return [dict(f) for f in dec.fields] if dec.fields else [{} for _ in dec.good]

    def _embed_chunks(self, dec: Decoded, payloads: list[dict[str, Any] | None]
                      ) -> tuple[list[OutputRecord], np.ndarray, Encoded]:
        """Every chunk of every document in one encoder call; chunk records (and document vectors)."""
        assert self.chunker is not None
        cs = self.s.chunking
        spans = self.chunker.split_many(dec.texts)
        chunk_texts = [text[sp.start:sp.end] for text, doc in zip(dec.texts, spans, strict=True) for sp in doc]
        enc = self.encoder.encode_batch(chunk_texts)
        rows: list[int] = []
        records: list[OutputRecord] = []
        doc_rows: list[np.ndarray] = []
        k = 0
        for i, ident, text, doc, payload in zip(dec.good, dec.ids, dec.texts, spans, payloads, strict=True):
            if len(doc) == 1 and not cs.document_vector:  # fits in one chunk: an ordinary output
                records.append(OutputRecord(i, ident, payload=_with_text(payload, text, self.outputs.payload_text)))
                rows.append(k)
                k += 1
                continue
            for n, sp in enumerate(doc):
                chunk_id = chunk_ident(cs.id_format, ident, n)
                headers = [("chunk-kind", b"chunk"), ("chunk-index", str(n).encode()),
                           ("chunk-count", str(len(doc)).encode()), ("chunk-start", str(sp.start).encode()),
                           ("chunk-end", str(sp.end).encode())]
                p = None
                if payload is not None:
                    p = {**payload, "document_id": ident, "chunk_index": n, "chunk_count": len(doc),
                         "chunk_start": sp.start, "chunk_end": sp.end}
                    p = _with_text(p, text[sp.start:sp.end], self.outputs.payload_text)
                records.append(OutputRecord(i, chunk_id, headers=headers, payload=p))
                rows.append(k + n)
            if cs.document_vector:
                doc_rows.append(np.arange(k, k + len(doc)))
                records.append(OutputRecord(i, ident, headers=[("chunk-kind", b"document"),
                                                               ("chunk-count", str(len(doc)).encode())],
                                            payload=payload))
                rows.append(-len(doc_rows))  # placeholder: the document vector, appended below
            k += len(doc)
        vectors = enc.vectors
        if doc_rows:
            docs = np.vstack([document_vector(vectors[r], enc.token_counts[r], self.encoder.normalize)
                              for r in doc_rows])
            vectors = np.vstack([vectors, docs])
            base = enc.vectors.shape[0]
            rows = [r if r >= 0 else base + (-r - 1) for r in rows]
        self.metrics.chunks.inc(sum(len(d) for d in spans if len(d) > 1 or cs.document_vector))
        return records, vectors[np.asarray(rows, dtype=np.int64)], enc


def _with_text(payload: dict[str, Any] | None, text: str, include: bool) -> dict[str, Any] | None:
    if payload is not None and include:
        payload["text"] = text
    return payload


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """Bytes a record carries (key, value, header names and values), as message.max.bytes counts them."""
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)
