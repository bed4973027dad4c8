# duckagents with its HTTP front door (and the WebSocket gateway when the config enables it).
#   docker build -t duckagents .
#   docker run -p 8080:8080 -v "$PWD/duckagents.toml:/etc/duckagents/duckagents.toml:ro" \
#       -e OPENAI_API_KEY -e DUCKAGENTS_TOKEN duckagents
# Serving 0.0.0.0 needs [[gateway.tokens]] in the config (docs/deploy.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY duckagents ./duckagents
RUN pip install '.[server]' \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin duckagents \
    && rm -rf /src

WORKDIR /
USER duckagents
EXPOSE 8080 8765

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

ENTRYPOINT ["duckagents"]
CMD ["--config", "/etc/duckagents/duckagents.toml", "serve", "--http", "0.0.0.0:8080"]
