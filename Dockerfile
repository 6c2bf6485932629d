# syntax=docker/dockerfile:1

# The `baton` image: `docker build -t baton:local .`, or `docker compose build` (compose.yaml).
# Its entrypoint is `baton`: `docker run --rm baton:local --help`.

# Build with the workspace's toolchain (rust-version in Cargo.toml) and its locked dependencies,
# on the Debian release the runtime stage uses, so the binary finds the same glibc there.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target directory are build caches: the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin baton \
    && install -m 0755 target/release/baton /usr/local/bin/baton

FROM debian:bookworm-slim
# CA certificates for amqps:// and S3, curl for the dispatcher's healthcheck.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# A user of its own, and the directories compose.yaml mounts volumes on, owned by it: Docker
# fills an empty named volume from the image, owner and mode included.
RUN groupadd --system --gid 10001 baton \
    && useradd --system --uid 10001 --gid baton --home-dir /var/lib/baton --shell /usr/sbin/nologin baton \
    && install -d -o baton -g baton -m 0755 /var/lib/baton /var/lib/baton/artifacts /var/lib/baton/work \
    && install -d -o baton -g baton -m 0700 /run/baton
COPY --from=build /usr/local/bin/baton /usr/local/bin/baton
USER baton
WORKDIR /var/lib/baton
# The HTTP API of `baton dispatcher` (BATON_HTTP_ADDR=0.0.0.0:8080 in compose.yaml).
EXPOSE 8080
ENTRYPOINT ["baton"]
CMD ["--help"]
