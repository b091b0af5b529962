# tokengate: multi-stage build of a small, non-root image.
#
#   docker build -t tokengate .
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/tokengate.toml:/etc/tokengate/tokengate.toml:ro" \
#     -v tokengate-audit:/var/lib/tokengate \
#     -e TOKENGATE_UPSTREAM_TOKEN -e TOKENGATE_AUDIT_KEY tokengate
#
# The mounted configuration must listen on 0.0.0.0 (server.listen = "0.0.0.0:8080") to be reachable
# from outside the container; keep server.admin_listen on an address only your orchestrator reaches.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not refetch them. (The manifest names the benchmark,
# so its file must be there for cargo to read the manifest at all.)
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo fetch --locked \
    && rm -rf src
COPY src ./src
# The OpenAPI document is compiled into the binary (served at /openapi.json on the admin listener).
COPY openapi ./openapi
RUN cargo build --release --locked --bin tokengate \
    && install -m 0755 target/release/tokengate /tokengate \
    && mkdir -p /state


# glibc and libgcc only; the web PKI roots are compiled into the binary, so no CA bundle is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tokengate /usr/local/bin/tokengate
# The working directory holds the audit trail (the default audit.path is relative:
# audit/tokengate.audit.jsonl). Mount a persistent volume here: the trail is the record of every
# change, and the gateway resumes its chain from it at start.
COPY --from=build --chown=nonroot:nonroot /state /var/lib/tokengate
WORKDIR /var/lib/tokengate
VOLUME /var/lib/tokengate
ENV TOKENGATE_CONFIG=/etc/tokengate/tokengate.toml
USER nonroot:nonroot
# 8080: callers. 9090: /healthz, /readyz, /metrics, /openapi.json.
EXPOSE 8080 9090
# The binary checks itself: no shell or curl in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/tokengate", "health"]
ENTRYPOINT ["/usr/local/bin/tokengate"]
CMD ["serve"]
