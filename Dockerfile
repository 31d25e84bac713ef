# syntax=docker/dockerfile:1
# Build: docker build -t wxhook .
# Run:   docker run -p 8080:8080 -e WXHOOK_TOKEN=... -v wxhook-data:/var/lib/wxhook/data wxhook
#        (works with --read-only: only the data volume is written)
#
# The build context is only what .dockerignore lets through (the manifest, the lock file,
# src/ and benches/). `.ci/run` rebuilds this stage from this file in a scratch directory
# holding exactly that context, so a file the build needs but does not copy fails CI.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that code changes do not rebuild them. Cargo reads every target
# the manifest declares before it builds anything, so the benches come with it.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 wxhook \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/wxhook --shell /usr/sbin/nologin wxhook \
 && mkdir -p /var/lib/wxhook/data \
 && chown -R 10001:10001 /var/lib/wxhook
COPY --from=build /src/target/release/wxhook /usr/local/bin/wxhook
# Numeric, so that `runAsNonRoot` and similar checks can see it is not root.
USER 10001:10001
WORKDIR /var/lib/wxhook
ENV WXHOOK_LISTEN=0.0.0.0:8080 \
    WXHOOK_DATA_DIR=/var/lib/wxhook/data
VOLUME ["/var/lib/wxhook/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 CMD ["wxhook", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["wxhook"]
CMD ["serve"]
