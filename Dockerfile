# Build stage: compile the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Both backends' migrations (migrations/postgres/, migrations/sqlite/),
# embedded into the binary at compile time by sqlx::migrate!.
COPY migrations ./migrations
COPY tests ./tests
RUN cargo build --release --locked --bin jobsd

# Runtime stage: the binary, its default jobs, nothing else (SQLite is
# compiled into the binary).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app jobsd \
    && mkdir -p /app/data \
    && chown jobsd:jobsd /app/data
WORKDIR /app
COPY --from=build /src/target/release/jobsd /usr/local/bin/jobsd
COPY default_jobs ./default_jobs
# The embedded store's directory, writable by the unprivileged user (the
# file, its -wal/-shm files and its serve lock live there). A named volume
# starts with this ownership; a bind mount must be writable by uid 10001.
VOLUME /app/data
USER jobsd
# Without DATABASE_URL the image serves the embedded store (one replica) in
# the volume; set DATABASE_URL=postgres://... for PostgreSQL and replicas
# (docker-compose.yml does).
# It listens on 0.0.0.0, and jobsd refuses to serve a non-loopback address
# without authentication (the message says how to fix it), so give it a
# bootstrap admin token:
#   docker run -e JOBSD_ADMIN_TOKEN="$(openssl rand -hex 32)" -p 8080:8080 jobsd
# or a store that holds a token already (`jobsd token create`), or, behind
# a proxy that authenticates, JOBSD_INSECURE_NO_AUTH=true.
ENV DATABASE_URL=sqlite:///app/data/jobsd.db \
    JOBSD_BIND=0.0.0.0:8080 \
    JOBSD_DEFAULT_JOBS_DIR=/app/default_jobs
EXPOSE 8080
ENTRYPOINT ["jobsd"]
CMD ["serve"]
