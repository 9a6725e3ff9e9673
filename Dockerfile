# The gateway: `docker build -t pd-gateway:0.1.0 .` (deploy/k8s/base names this image).
# Slim and non-root; no vLLM, no torch: the gateway only routes. Extras: k8s (pod discovery),
# tracing (OTLP export of spans, off unless tracing.otlp_endpoint is set).
# scripts/user_path.py builds a wheel from exactly these COPY lines and runs the entrypoint.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY workers workers
COPY pdcli pdcli
COPY loadtest loadtest
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[k8s,tracing]'

FROM python:3.11-slim
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
EXPOSE 8080
# Liveness: the process serves. (Kubernetes uses its own probes: /health and /ready.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
ENTRYPOINT ["pd-gateway"]
CMD ["serve", "--config", "/etc/pd-gateway/gateway.yaml"]
