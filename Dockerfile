# tokengate: multi-stage build of a small, non-root image.
#
#   docker build -t tokengate .
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/tokengate.toml:/etc/tokengate/tokengate.toml:ro" \
#     -e TOKENGATE_UPSTREAM_TOKEN tokengate
#
# The mounted configuration must listen on 0.0.0.0 (server.listen = "0.0.0.0:8080") to be reachable
# from outside the container; keep server.admin_listen on an address only your orchestrator reaches.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not refetch them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo fetch --locked \
    && rm -rf src
COPY src ./src
RUN cargo build --release --locked --bin tokengate \
    && install -m 0755 target/release/tokengate /tokengate

# glibc and libgcc only; the web PKI roots are compiled into the binary, so no CA bundle is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tokengate /usr/local/bin/tokengate
ENV TOKENGATE_CONFIG=/etc/tokengate/tokengate.toml
USER nonroot:nonroot
# 8080: callers. 9090: /healthz, /readyz, /metrics.
EXPOSE 8080 9090
# The binary checks itself: no shell or curl in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/tokengate", "health"]
ENTRYPOINT ["/usr/local/bin/tokengate"]
CMD ["serve"]
