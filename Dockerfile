# syntax=docker/dockerfile:1
#
# embedstream worker image. Needs BuildKit (the default builder since Docker 23): only the stages
# the chosen MODEL_SOURCE needs are built.
#
#   docker build -t embedstream .                                      # no model baked in: mount one
#                                                                      # (EMBED_MODEL__PATH) or let the
#                                                                      # worker fetch EMBED_MODEL__NAME
#   docker build -t embedstream --build-arg MODEL_SOURCE=local \
#                --build-arg MODEL_DIR=models/gemma-deposium-768d .   # bake a folder of the context
#   docker build -t embedstream --build-arg MODEL_SOURCE=hub \
#                --build-arg MODEL_ID=tss-deposium/gemma-deposium-768d \
#                --build-arg MODEL_REVISION=main .                     # bake a hub snapshot
#
# With a baked model EMBED_MODEL__PATH points at /opt/embedstream/model; any value set at run time
# (a mounted volume, the Helm chart's pvc/imageVolume sources) overrides it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# none | local | hub
ARG MODEL_SOURCE=none

# ---------------------------------------------------------------------------------------------------
# builder: a venv with the package and the hub extra. All dependencies ship manylinux wheels, so no
# compiler is needed here either; nothing from this stage but /opt/venv reaches the final image.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
# DL3013: "." is this project, not a registry package; its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[hub,fast]" \
    && python -m compileall -q /opt/venv/lib \
    && embedstream --help > /dev/null

# ---------------------------------------------------------------------------------------------------
# model-hub: download a hub snapshot at build time (MODEL_SOURCE=hub). Only the files a Model2Vec
# model needs are fetched.
FROM builder AS model-hub
ARG MODEL_ID=tss-deposium/gemma-deposium-768d
ARG MODEL_REVISION=main
RUN python -c "import sys; from huggingface_hub import snapshot_download; \
snapshot_download(sys.argv[1], revision=sys.argv[2], local_dir='/model', \
allow_patterns=['*.safetensors', '*.json', '*.md', '*.txt'])" "$MODEL_ID" "$MODEL_REVISION" \
    && rm -rf /model/.cache && chmod -R a+rX,go-w /model \
    && test -f /model/model.safetensors && test -f /model/tokenizer.json && test -f /model/config.json

# ---------------------------------------------------------------------------------------------------
# model-local: a folder of the build context (MODEL_SOURCE=local), holding model.safetensors,
# tokenizer.json and config.json. COPY keeps the context's file modes, and a model file written 0600
# is unreadable by uid 10001 (scripts/image-test.sh found this): make it readable here.
FROM ${PYTHON_IMAGE} AS model-local
ARG MODEL_DIR=models/model
COPY ${MODEL_DIR} /model
RUN chmod -R a+rX,go-w /model \
    && test -f /model/model.safetensors && test -f /model/tokenizer.json && test -f /model/config.json

# ---------------------------------------------------------------------------------------------------
# runtime: the base of every final variant. No compilers, no pip cache, numeric non-root user.
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="embedstream" \
      org.opencontainers.image.description="Kafka worker that turns text events into static Model2Vec embeddings" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Not --system: system accounts are uid < 1000 and useradd warns about 10001 (seen in scripts/image-test.sh).
RUN groupadd --gid 10001 embedstream \
    && useradd --no-log-init --no-create-home --uid 10001 --gid 10001 --home-dir /tmp \
       --shell /usr/sbin/nologin embedstream
COPY --from=builder /opt/venv /opt/venv
# The worker writes nothing but (possibly) /tmp: the image runs with a read-only root filesystem.
# HF_HOME is where a hub download (no baked or mounted model) is cached.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    EMBED_METRICS__PORT=9100
WORKDIR /tmp
USER 10001:10001
EXPOSE 9100
# Liveness as the chart's probe sees it; a `produce`/`encode` container serves no /healthz: disable
# the check there (compose does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EMBED_METRICS__PORT', '9100'), timeout=4)"]
ENTRYPOINT ["embedstream"]
CMD ["run"]

# ---------------------------------------------------------------------------------------------------
# The three variants; the last stage picks one by MODEL_SOURCE.
FROM runtime AS final-none

FROM runtime AS final-local
COPY --from=model-local --chown=0:0 /model /opt/embedstream/model
ENV EMBED_MODEL__PATH=/opt/embedstream/model
# The tokenizer check runs here once (embedstream model prepare: its verdict is stored next to the model, so
# each start skips loading the reference tokenizer; worker.prepared). As root: the model folder is root's.
# The pooling kernel it compiles goes to a scratch cache, removed: numba keeps a run's compile in HOME=/tmp.
USER 0:0
RUN NUMBA_CACHE_DIR=/tmp/numba-build embedstream model prepare /opt/embedstream/model \
    && rm -rf /tmp/numba-build && test -f /opt/embedstream/model/embedstream-prepared.json
USER 10001:10001

FROM runtime AS final-hub
COPY --from=model-hub --chown=0:0 /model /opt/embedstream/model
ENV EMBED_MODEL__PATH=/opt/embedstream/model
# The tokenizer check runs here once (embedstream model prepare: its verdict is stored next to the model, so
# each start skips loading the reference tokenizer; worker.prepared). As root: the model folder is root's.
# The pooling kernel it compiles goes to a scratch cache, removed: numba keeps a run's compile in HOME=/tmp.
USER 0:0
RUN NUMBA_CACHE_DIR=/tmp/numba-build embedstream model prepare /opt/embedstream/model \
    && rm -rf /tmp/numba-build && test -f /opt/embedstream/model/embedstream-prepared.json
USER 10001:10001

# DL3006: final-${MODEL_SOURCE} is one of the stages above, not a registry image to pin.
# hadolint ignore=DL3006
FROM final-${MODEL_SOURCE} AS final
