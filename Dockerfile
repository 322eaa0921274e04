# walsync in an empty image, built from a clone of this repository:
#
#   docker build -t walsync .
#   docker run --rm --stop-timeout 40 -v app-data:/data \
#     -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_ENDPOINT_URL_S3 \
#     walsync watch /data/app.db -b s3://my-bucket/walsync
#
# Stage 1 builds the binary scripts/build-static.sh builds: the static musl
# walsync, with the repository's .cargo/config.toml (LIBSQLITE3_FLAGS for the
# read replica). Stage 2 holds that binary, an empty /tmp and /data, nothing
# else: no shell, no CA bundle (the HTTPS client carries the Mozilla root
# set compiled in, webpki-roots).
#
# Stopping: walsync's default --shutdown-timeout is 30 s, Docker's default
# stop timeout is 10 s. Give it more, or it is SIGKILLed before it ships the
# last commits (nothing is lost: the WAL keeps them and the next start ships
# them, but the replica lags meanwhile):
#   docker run --stop-timeout 40
#   compose: stop_grace_period: 40s
#   Kubernetes: terminationGracePeriodSeconds: 45
#
# The database folder must be a volume shared with the application, so
# walsync sees the same -wal and -shm files, and it must be writable by uid
# 65532 (walsync writes its state folder and checkpoints beside each
# database). A new named volume mounted at /data takes /data's owner
# (65532) from this image; chown a bind-mounted folder to 65532, or run
# with `--user` set to the application's uid (the same uid for both).

# 1.89 or newer: the locked rusqlite 0.41 and rusty-s3 0.11 need it.
FROM rust:1.95-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src

# Dependencies first: this layer is reused until a manifest or the lock
# file changes. Every workspace member's Cargo.toml is needed to load the
# workspace; the empty sources only let cargo read the manifests.
COPY Cargo.toml Cargo.lock ./
COPY .cargo/config.toml .cargo/config.toml
COPY bench/Cargo.toml bench/Cargo.toml
COPY python/Cargo.toml python/Cargo.toml
RUN mkdir -p src bench/src python/src \
 && touch src/main.rs src/lib.rs bench/src/main.rs python/src/lib.rs \
 && cargo fetch --locked

COPY . .
RUN CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --target x86_64-unknown-linux-musl --bin walsync --locked \
 && strip target/x86_64-unknown-linux-musl/release/walsync \
 && mkdir -p /image/tmp /image-volume/data \
 && chmod 1777 /image/tmp \
 && cp target/x86_64-unknown-linux-musl/release/walsync /image/walsync

FROM scratch
COPY --from=builder /image/ /
COPY --from=builder --chown=65532:65532 /image-volume/ /
# Numeric: scratch has no /etc/passwd.
USER 65532:65532
# walsync's clean stop: ship what is committed, wait for the uploads, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/walsync"]
CMD ["version"]
