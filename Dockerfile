# Multi-stage build: a Rust toolchain builds tokengate, a slim Debian image runs it as a
# non-root user. Ports: 6432 (PostgreSQL protocol), 9187 (admin: /metrics /healthz /readyz).
#
#   docker build -t tokengate .                  # the server image (default target)
#   docker build -t tokengate-demo --target demo .
#   docker run --rm -it --init -p 6432:6432 tokengate-demo   # --init reaps what the demo starts
#
# tests/deploy_docker.rs copies exactly the files this build stage COPYs into an empty
# directory and checks that they compile (`cargo check --locked --offline`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names the benches: the manifest does not load without them.
COPY benches ./benches
# src/demo/mod.rs embeds policies/demo.yaml.
COPY policies ./policies
RUN cargo build --release --locked --bin tokengate

# What every image needs at run time: CA certificates (sslmode=verify-* against public CAs),
# a non-root user, the binary, and the example policies.
FROM debian:bookworm-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tokengate \
 && useradd --system --uid 10001 --gid 10001 --home /nonexistent --shell /usr/sbin/nologin tokengate
COPY --from=build /src/target/release/tokengate /usr/local/bin/tokengate
COPY policies /etc/tokengate/policies
EXPOSE 6432 9187
ENTRYPOINT ["/usr/local/bin/tokengate"]

# `tokengate demo` starts its own PostgreSQL: it needs the server binaries (initdb, postgres)
# and a writable /tmp, and listens on all interfaces so `-p 6432:6432` reaches it.
FROM base AS demo
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
ENV TOKENGATE_PG_BINDIR=/usr/lib/postgresql/15/bin
USER 10001:10001
CMD ["demo", "--listen", "0.0.0.0:6432", "--admin", "0.0.0.0:9187"]

# The server (default target): configure it with TOKENGATE_* variables or flags.
FROM base AS runtime
USER 10001:10001
ENV TOKENGATE_LISTEN=0.0.0.0:6432 TOKENGATE_ADMIN=0.0.0.0:9187 TOKENGATE_LOG_FORMAT=json
CMD ["serve"]
