# Quanto worker image: `docker build -t quanto .` then `docker run quanto` (runs `quanto worker`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Runtime libraries the wheels do not bundle: Pango + a font for WeasyPrint (PDF reports) and the
# OpenMP runtime for LightGBM. TA-Lib comes as a binary wheel from PyPI (`ta-lib`), so no C build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies and package first (cached until pyproject.toml or src/ change).
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf build

# Job files and Temporal configuration (search-attributes.env) for the CLI.
COPY configs ./configs
COPY temporal-config ./temporal-config

# Non-root user; the lake lives on a volume at /data/lake owned by that user.
RUN useradd --create-home --uid 10001 --user-group quanto \
    && mkdir -p /data/lake /app/.quanto \
    && chown -R quanto:quanto /data/lake /app/.quanto
USER quanto

ENV QUANTO_LAKE_ROOT=/data/lake

# Prometheus metrics (Quanto's and the Temporal SDK's) at :9464/metrics; set it empty to turn them off.
ENV QUANTO_METRICS_PORT=9464
EXPOSE 9464

CMD ["quanto", "worker"]
