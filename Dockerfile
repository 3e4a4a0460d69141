# token-broker image: the release binary on distroless (glibc, no shell), as uid 65532.
#
#   docker build -t token-broker .
#   docker run --rm -v "$PWD/config.toml:/etc/token-broker/config.toml:ro" token-broker
#
# The config must listen where the HEALTHCHECK looks (127.0.0.1:8656, or set
# TOKEN_BROKER_URL) and keep state.dir under the volume, e.g. /var/lib/token-broker/state.
# deploy/compose and deploy/kubernetes show complete setups.

FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, against stub sources: this layer is rebuilt only when Cargo.toml
# or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# COPY keeps the sources' old mtimes, which can look older than the stub build: touch
# them so cargo rebuilds the crate itself. The empty state directory is made here
# because the final image has no shell to make it.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && mkdir -p /out/var/lib/token-broker \
    && cp target/release/token-broker /out/token-broker

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="token-broker" \
      org.opencontainers.image.description="A local OAuth2 token broker: one refresh per rotation, tokens served on localhost" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/token-broker /usr/local/bin/token-broker
# Owned by the runtime user: Docker seeds a new named or anonymous volume from the
# image's directory, ownership included, so the broker can create state.dir inside it.
COPY --from=builder --chown=65532:65532 /out/var/lib/token-broker /var/lib/token-broker

# Distroless' nonroot user; stated again so the image does not depend on the base's default.
USER 65532:65532
VOLUME /var/lib/token-broker
EXPOSE 8656

# `probe` exists because this image has no shell or curl; it asks /readyz, so the
# container turns healthy once every required credential holds a usable token.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/token-broker", "probe"]

# The broker runs as PID 1 and reaps whatever its exec commands orphan itself
# (src/exec/reap.rs), so no --init is needed.
ENTRYPOINT ["/usr/local/bin/token-broker"]
CMD ["run", "--config", "/etc/token-broker/config.toml"]
