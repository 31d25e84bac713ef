# syntax=docker/dockerfile:1
# Build: docker build -t wxhook .
# Run:   docker run -p 8080:8080 -e WXHOOK_TOKEN=... -v wxhook-data:/var/lib/wxhook/data wxhook
#        (works with --read-only: only the data volume is written)

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/wxhook --shell /usr/sbin/nologin wxhook \
 && mkdir -p /var/lib/wxhook/data \
 && chown -R wxhook:wxhook /var/lib/wxhook
COPY --from=build /src/target/release/wxhook /usr/local/bin/wxhook
USER wxhook
WORKDIR /var/lib/wxhook
ENV WXHOOK_LISTEN=0.0.0.0:8080 \
    WXHOOK_DATA_DIR=/var/lib/wxhook/data
VOLUME ["/var/lib/wxhook/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 CMD ["wxhook", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["wxhook"]
CMD ["serve"]
