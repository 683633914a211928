# The relay in a small image: docker build -t forwarding . && docker run -p 8601:8601 forwarding
# Settings: flags after the image name, or a TOML file (deploy/forwarding.toml) mounted
# and given with --config. Ports: 8601 relay, 8602 WebSockets and the web page, 9601 metrics.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin forwarding
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER forwarding
EXPOSE 8601 8602 9601
# The relay is PID 1 and handles SIGTERM itself: it flushes sessions and exits 0.
STOPSIGNAL SIGTERM
# Healthy while the metrics listener answers (it runs in the relay's own event loop).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9601/metrics', timeout=4)"]
ENTRYPOINT ["forwarding", "serve"]
CMD ["--host", "0.0.0.0", "--ws-port", "8602", "--metrics", "0.0.0.0:9601", "--log-format", "json"]
