# syntax=docker/dockerfile:1
# Regio worker image (CPU build of llama-cpp-python). Build from the repository root:
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t regio/worker-cpu .
# Stage 1 installs only the `worker` dependency group into /opt/venv and generates the protobuf
# stubs; stage 2 is a slim runtime with the venv, the source folders and the stubs.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# llama-cpp-python is compiled from source (cmake comes from PyPI through the build backend).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
# pip >= 25.1 understands PEP 735 dependency groups (--group).
RUN python -m venv /opt/venv && /opt/venv/bin/pip install "pip>=25.1" \
    && python -m venv /opt/protoc && /opt/protoc/bin/pip install "pip>=25.1"
COPY pyproject.toml ./
RUN /opt/venv/bin/pip install --group worker
# Stubs generated in a throw-away venv by the grpcio-tools matching the grpcio and protobuf
# the image ships (generated code refuses an older runtime than the one that generated it).
COPY proto/ proto/
RUN /opt/venv/bin/pip freeze | grep -iE '^(grpcio|protobuf)==' > /tmp/runtime-pins.txt \
    && /opt/protoc/bin/pip install -c /tmp/runtime-pins.txt \
        "grpcio-tools==$(/opt/venv/bin/python -c 'import grpc; print(grpc.__version__)')" \
    && mkdir -p build/proto \
    && /opt/protoc/bin/python -m grpc_tools.protoc -Iproto --python_out=build/proto \
        --grpc_python_out=build/proto $(find proto -name '*.proto')
COPY services/common/ services/common/
COPY services/worker/ services/worker/
COPY config/ config/
RUN /opt/venv/bin/python -m compileall -q services/common services/worker build/proto

FROM python:3.11-slim-bookworm AS runtime
# llama.cpp's CPU backend uses OpenMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 regio \
    && useradd --system --uid 10001 --gid regio --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin regio
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/services/common /app/services/common
COPY --from=build /src/services/worker /app/services/worker
COPY --from=build /src/build/proto /app/build/proto
COPY --from=build /src/config /app/config
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/services/common:/app/services/worker:/app/build/proto \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REGIO_MODELS_DIR=/models
USER 10001:10001
# GGUF files are mounted here (read-only in production), never baked into the image. The worker
# speaks only NATS: no port, and its liveness is its heartbeat, seen by every gateway.
VOLUME ["/models"]
ENTRYPOINT ["python", "-m", "regio_worker"]
