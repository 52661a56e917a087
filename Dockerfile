# Multi-stage build: a Rust toolchain builds tokengate, a slim Debian image runs it as a
# non-root user. Ports: 6432 (PostgreSQL protocol), 9187 (admin: /metrics /healthz /readyz).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY docs ./docs
RUN cargo build --release --locked --bin tokengate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin tokengate
COPY --from=build /src/target/release/tokengate /usr/local/bin/tokengate
COPY policies /etc/tokengate/policies
USER 10001:10001
EXPOSE 6432 9187
ENV TOKENGATE_LISTEN=0.0.0.0:6432 TOKENGATE_ADMIN=0.0.0.0:9187 TOKENGATE_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/tokengate"]
CMD ["serve"]
