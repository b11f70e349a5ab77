# drover in a container: a multi-stage build, a small non-root runtime image.
#   docker build -t drover .
#   docker run -p 8083:8083 -e DROVER_SERVERS=http://gpu1:11434 drover
# The probe agent is the same binary: docker run --gpus all -p 8005:8005 drover probe
# The base images are build arguments (defaults: Docker Hub's), so that a build where no
# registry is reachable can name local ones (scripts/container-test does).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${RUST_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
# One step builds, keeps the stripped binary and drops target/ (GBs), so the stage's layer is small.
RUN cargo build --release --locked --bin drover \
    && strip target/release/drover && mv target/release/drover /usr/local/bin/drover && rm -rf target

FROM ${RUNTIME_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/drover --create-home drover
COPY --from=build /usr/local/bin/drover /usr/local/bin/drover
COPY conf/container.yaml /etc/drover/drover.yaml
USER drover
WORKDIR /var/lib/drover
EXPOSE 8083 9091
ENTRYPOINT ["drover"]
CMD ["serve", "-c", "/etc/drover/drover.yaml"]
