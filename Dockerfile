# One image for the gateway, every consumer worker and the presence API; the command picks which.
# The base is pinned to a full release of Python and Debian, not to a digest: no digest
# could be checked where this was written (no registry answers there), and a digest would
# refuse the stand-in that devtools/standins.py builds under this name where none does.
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The locked dependency tree first (every version and file hash fixed in requirements.lock,
# made by `make lock` from pyproject.toml), so that a code change rebuilds only the layers
# below it and two builds months apart run the same libraries; then the project alone.
RUN python -m venv /opt/aifi
COPY requirements.lock /tmp/
RUN /opt/aifi/bin/pip install --require-hashes --requirement /tmp/requirements.lock

WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY gateway ./gateway
COPY ledger ./ledger
COPY consumers ./consumers
COPY presence ./presence
# pip and setuptools install nothing at run time: left out of the environment (22 MB).
RUN /opt/aifi/bin/pip install --no-deps ./ \
    && /opt/aifi/bin/pip uninstall --yes --quiet pip setuptools

# The image takes only the virtual environment from the build: no sources, no build tree.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/aifi/bin:$PATH
# The processes write only under /app/data (and /tmp): the root filesystem can be read-only.
# 999:999 is the user earlier releases ran as (the first system user on this base), so
# the spool and ledger volumes they wrote stay writable after an upgrade.
RUN groupadd --system --gid 999 aifi \
    && useradd --system --uid 999 --gid 999 --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin aifi \
    && mkdir -p /app/data/spool \
    && chown -R 999:999 /app/data
COPY --from=build /opt/aifi /opt/aifi
WORKDIR /app
COPY config.yaml ./
# Numeric, so that a runtime refusing root (runAsNonRoot) can check it without /etc/passwd.
USER 999:999
ENV AIFI_CONFIG=/app/config.yaml AIFI_SPOOL_DIR=/app/data/spool AIFI_LEDGER_DB=/app/data/ledger.sqlite3
EXPOSE 8080 8090
CMD ["aifi-gateway"]
