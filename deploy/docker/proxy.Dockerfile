# weft-proxy: the sidecar (image weft-proxy:0.1.0; injected as the weft-proxy container).
# Build from the repository root:
#   docker build -f deploy/docker/proxy.Dockerfile -t weft-proxy:0.1.0 .
# Two stages: the Rust toolchain builds the release binary; the runtime image holds only that
# binary and the CA certificates, and runs as an unprivileged user (65532, as the manifests'
# securityContext expects). Unverified here: no container engine runs in this project's CI.

FROM rust:1.95-bookworm AS build
# cmake builds zlib-ng for a Pingora dependency.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weft-proxy --bin weft-proxy

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/weft-proxy /usr/local/bin/weft-proxy
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/weft-proxy"]
