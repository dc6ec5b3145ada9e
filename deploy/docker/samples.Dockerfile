# weft-sample: the sample apps of the shop (image weft-sample:0.1.0; deploy/examples/kubernetes/shop-apps.yaml).
# Build from the repository root:
#   docker build -f deploy/docker/samples.Dockerfile -t weft-sample:0.1.0 .
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
RUN cargo build --release --locked -p weft-samples --bin weft-sample

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/weft-sample /usr/local/bin/weft-sample
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/weft-sample"]
