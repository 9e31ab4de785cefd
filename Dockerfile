# One image for the gateway, every consumer worker and the presence API; the command picks which.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY core ./core
COPY gateway ./gateway
COPY consumers ./consumers
COPY presence ./presence
RUN pip install . && useradd --system --home /app aifi && mkdir -p /app/data/spool && chown -R aifi /app/data

COPY config.yaml ./
USER aifi
ENV AIFI_CONFIG=/app/config.yaml AIFI_SPOOL_DIR=/app/data/spool AIFI_LEDGER_DB=/app/data/ledger.sqlite3
EXPOSE 8080 8090
CMD ["aifi-gateway"]
