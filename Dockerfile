# vaxpulse worker image: built against the libtorch of PyPI torch 2.11.0 (tch 0.24), in two
# variants from one file:
#   docker build --build-arg VARIANT=cpu  -t vaxpulse:cpu  .   (CPU wheel: no CUDA libraries)
#   docker build --build-arg VARIANT=cuda -t vaxpulse:cuda .   (CUDA wheel + its nvidia-* libraries)
# Models are NOT baked in: mount a model store at /models (docker-compose.yml does), so a new
# model version needs no rebuild. The build stage copies exactly what the worker crate needs;
# scripts/check_image_inputs.sh builds from only these files (CI runs it).
ARG VARIANT=cpu

FROM rust:1.95-bookworm AS build
ARG VARIANT
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev python3-venv && rm -rf /var/lib/apt/lists/*
# The CPU variant takes torch from PyTorch's CPU index (same version, no CUDA dependencies).
RUN python3 -m venv /opt/venv \
 && if [ "$VARIANT" = cpu ]; then \
      /opt/venv/bin/pip install --no-cache-dir torch==2.11.0 --index-url https://download.pytorch.org/whl/cpu; \
    else \
      /opt/venv/bin/pip install --no-cache-dir torch==2.11.0; \
    fi
ENV PATH=/opt/venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
WORKDIR /src
# build.rs links libtorch_cuda explicitly when present: without it a CUDA image has no CUDA backend.
COPY Cargo.toml Cargo.lock build.rs ./
# The harness is a workspace member (cargo needs its manifest to resolve the workspace) but is
# not built into the image.
COPY harness harness
COPY src src
COPY data data
# The charts' font is compiled in.
COPY assets assets
RUN cargo build --release --locked -p vaxpulse --bin vaxpulse
# Runtime libraries: libtorch, and for CUDA the nvidia-* wheels' libraries beside it.
RUN mkdir -p /opt/torch/lib \
 && cp -a /opt/venv/lib/python3.11/site-packages/torch/lib/. /opt/torch/lib/ \
 && if [ "$VARIANT" = cuda ]; then \
      for d in /opt/venv/lib/python3.11/site-packages/nvidia/*/lib; do cp -a "$d"/. /opt/torch/lib/; done; \
    fi

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/torch/lib /opt/torch/lib
COPY --from=build /src/target/release/vaxpulse /usr/local/bin/vaxpulse
COPY config /config
# The probe set every replica scores (monitor.probe_file).
COPY data/probe_fr.jsonl /data/probe_fr.jsonl
# The binary brings its own allocator for the whole process (jemalloc, src/alloc.rs): glibc's
# arenas made RSS follow the backlog's length. Its options can be changed here with
# MALLOC_CONF (jemalloc's variable) without a rebuild.
ENV LD_LIBRARY_PATH=/opt/torch/lib VAXPULSE_CONFIG=/config/compose.toml
# The model store is a volume (read-only is enough for the worker).
VOLUME ["/models"]
USER 65534
EXPOSE 9464
HEALTHCHECK CMD curl -fsS http://127.0.0.1:9464/health/live || exit 1
ENTRYPOINT ["vaxpulse"]
CMD ["run"]
