# The production image: `docker build -t sync-gateway .` (README, "Container image").
#
# Build stage: the toolchain CI uses (Cargo.toml's rust-version is the minimum; Cargo.lock is
# resolved and tested with 1.95). Both stages are Debian 12 so the binary's glibc matches.
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies in their own layer: a placeholder for every target the manifest names (the lib,
# the binary, the [[bench]], the example, the [[test]]) lets `cargo build` compile every dependency from
# Cargo.toml and Cargo.lock alone, so editing src/ does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches examples tests/api \
    && touch src/lib.rs \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > benches/audit_throughput.rs \
    && echo 'fn main() {}' > examples/bench_env.rs \
    && echo 'fn main() {}' > tests/api/main.rs \
    && cargo build --release --locked --no-default-features \
    && rm -rf src benches examples tests target/release/.fingerprint/sync-gateway-*

# The real sources. The placeholder's fingerprint was removed above, so the crate itself is
# always rebuilt here, whatever the copied files' modification times.
# --no-default-features leaves out the `sim` feature: no simulators and no `dev` command in the
# image.
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --no-default-features \
    && install -D -m 0755 target/release/sync-gateway /out/sync-gateway

# Runtime: Debian slim rather than distroless so that `kubectl exec ... -- sh -c '...'` can
# expand the rotated audit files (audit.jsonl*) for `audit verify`, and `kubectl cp` (tar) can
# copy the trail out. ca-certificates: the TLS verifier reads the system trust store.
FROM debian:bookworm-slim
# DL3008 (pin apt versions) is ignored on purpose: the CA bundle and security fixes should come
# in with every rebuild; a pinned version would stop that, and breaks once Debian drops it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 sync-gateway \
    && useradd --system --uid 65532 --gid 65532 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin sync-gateway \
    && install -d -o 65532 -g 65532 -m 0750 /data \
    && install -d -m 0755 /etc/sync-gateway

COPY --from=build /out/sync-gateway /usr/local/bin/sync-gateway

# The audit trail (audit.path) and the service identities' session stores (store_path) live
# here; the configuration (no secrets: those come from mounted files or SYNC_GATEWAY__* env
# variables at run time) is mounted at /etc/sync-gateway/gateway.toml.
VOLUME ["/data"]
WORKDIR /data
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["sync-gateway"]
CMD ["serve", "--config", "/etc/sync-gateway/gateway.toml"]
