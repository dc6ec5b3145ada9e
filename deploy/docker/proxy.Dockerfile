# weft-proxy: the sidecar (image weft-proxy:0.1.0; injected as the weft-proxy container).
# Build from the repository root:
#   docker build -f deploy/docker/proxy.Dockerfile -t weft-proxy:0.1.0 .
# With no registry (as on this project's CI machines), scripts/build-images makes both base
# images locally (Debian bookworm by mmdebstrap; the builder adds this machine's Rust 1.95) and
# builds with buildah, passing them as RUST_IMAGE and RUNTIME_IMAGE.
# Two stages: the Rust toolchain builds the release binary; the runtime image holds only that
# binary, the CA certificates, nftables (`nft`) and iptables (`iptables-restore`, what
# `weft-proxy init --backend auto` falls back to where the kernel has no inet NAT: the injected
# capture init container uses this image as root with NET_ADMIN and NET_RAW only), and runs as
# an unprivileged user of its own (2102, as the injected sidecar's securityContext says): capture
# exempts the sidecar's UID, so it must not be the UID apps run as (the images' 65532).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# cmake builds zlib-ng for a Pingora dependency.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The target directory and the crate registry are caches shared by the three images' builds
# (BuildKit and buildah both keep them). All three Dockerfiles run this same command, building
# the three binaries with one feature resolution: the first image's build compiles everything,
# the other two find it all fresh in the cache (a `-p <own package>` build would resolve
# features differently and compile most dependencies again, per image). A cache is not part of
# the image, so the binaries are copied out in the same step; the runtime stage takes its own.
RUN --mount=type=cache,target=/src/target --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p weft-proxy -p weft-control-plane -p weft-samples \
      --bin weft-proxy --bin weft-control-plane --bin weft-sample \
 && cp target/release/weft-proxy target/release/weft-control-plane target/release/weft-sample \
      /usr/local/bin/

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates nftables iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/weft-proxy /usr/local/bin/weft-proxy
USER 2102:2102
ENTRYPOINT ["/usr/local/bin/weft-proxy"]
