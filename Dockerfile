# gatemeter container image: build in the Rust image, run as a non-root user on Debian slim.
#   docker build -t gatemeter .
#   docker run -p 4318:4318 -e GATEMETER_LISTEN=0.0.0.0:4318 -e GATEMETER_INGEST_TOKENS=... gatemeter
# docker-compose.yml builds and runs it with Redis, PostgreSQL, Prometheus, Alertmanager, Grafana.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin gatemeter \
 && install -D target/release/gatemeter /out/gatemeter

FROM debian:bookworm-slim
# curl: the health check; postgresql-client: the pg_dump of GET /api/v1/export/backup (Debian 12's
# PostgreSQL 15, the server version of docker-compose.yml and of the test suite).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/gatemeter --create-home gatemeter
COPY --from=build /out/gatemeter /usr/local/bin/gatemeter
COPY config/gatemeter.example.yaml /etc/gatemeter/gatemeter.example.yaml
USER gatemeter
WORKDIR /var/lib/gatemeter
ENV GATEMETER_LISTEN=0.0.0.0:4318 \
    GATEMETER_DATA_DIR=/var/lib/gatemeter/data
EXPOSE 4318
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:4318/readyz >/dev/null || exit 1
ENTRYPOINT ["gatemeter"]
CMD ["serve"]
