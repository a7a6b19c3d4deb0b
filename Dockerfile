# Build stage: compile the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY tests ./tests
RUN cargo build --release --locked --bin jobsd

# Runtime stage: the binary, its default jobs, nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app jobsd
WORKDIR /app
COPY --from=build /src/target/release/jobsd /usr/local/bin/jobsd
COPY default_jobs ./default_jobs
USER jobsd
ENV JOBSD_BIND=0.0.0.0:8080 \
    JOBSD_DEFAULT_JOBS_DIR=/app/default_jobs
EXPOSE 8080
ENTRYPOINT ["jobsd"]
CMD ["serve"]
