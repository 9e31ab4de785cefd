# One image for the gateway, every consumer worker and the presence API; the command picks which.
# The base is pinned to a full release (Python and Debian). Pinning it by digest as well
# would make it immutable; add `@sha256:…` from `docker buildx imagetools inspect` where a
# registry is reachable (where it is not, devtools/standins.py builds a stand-in by this name).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The locked dependency tree first (every version and file hash fixed in requirements.lock,
# made by pip-compile from pyproject.toml), so that a code change rebuilds only the layers
# below it and two builds months apart run the same libraries.
COPY requirements.lock ./
RUN pip install --require-hashes --requirement requirements.lock

COPY pyproject.toml README.md ./
COPY core ./core
COPY gateway ./gateway
COPY consumers ./consumers
COPY presence ./presence
# The project itself adds no dependency the lock lacks (--no-deps); the user owns only
# /app/data, the one place the processes write (besides /tmp): the rest of the root
# filesystem can be mounted read-only.
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin aifi \
    && mkdir -p /app/data/spool \
    && chown -R 10001:10001 /app/data

COPY config.yaml ./
# Numeric, so that a runtime refusing root (runAsNonRoot) can check it without /etc/passwd.
USER 10001:10001
ENV AIFI_CONFIG=/app/config.yaml AIFI_SPOOL_DIR=/app/data/spool AIFI_LEDGER_DB=/app/data/ledger.sqlite3
EXPOSE 8080 8090
CMD ["aifi-gateway"]
