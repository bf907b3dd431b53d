# syntax=docker/dockerfile:1
# Regio worker image for NVIDIA GPUs (CUDA build of llama-cpp-python). Build from the repository
# root (no GPU needed to build; compiling the CUDA kernels takes a while):
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t regio/worker-cuda .
# Run with every layer offloaded: REGIO_WORKER_N_GPU_LAYERS=-1. GGUF files are mounted at /models.
# Stage 1 (CUDA devel: nvcc, headers) installs only the `worker` dependency group into /opt/venv,
# compiling llama-cpp-python with -DGGML_CUDA=on, and generates the protobuf stubs; stage 2 is the
# CUDA runtime image with the venv, the source folders and the stubs.

FROM nvidia/cuda:12.6.3-devel-ubuntu24.04 AS build
# GPU generations compiled for (Turing, Ampere, Ada, Hopper); narrow it to build faster.
ARG CUDA_ARCHITECTURES="75;80;86;89;90"
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# pip >= 25.1 understands PEP 735 dependency groups (--group).
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install "pip>=25.1" \
    && python3 -m venv /opt/protoc && /opt/protoc/bin/pip install "pip>=25.1"
COPY pyproject.toml ./
# The driver library is not present at build time: link against the toolkit's stub.
RUN ln -s /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/cuda/lib64/stubs/libcuda.so.1 \
    && LD_LIBRARY_PATH=/usr/local/cuda/lib64/stubs:$LD_LIBRARY_PATH \
       CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" \
       /opt/venv/bin/pip install --group worker
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

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS runtime
# Same Python as the build stage (the venv links to /usr/bin/python3); OpenMP for llama.cpp.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 \
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
    REGIO_MODELS_DIR=/models \
    REGIO_WORKER_N_GPU_LAYERS=-1
USER 10001:10001
# GGUF files are mounted here (read-only in production), never baked into the image. The worker
# speaks only NATS: no port, and its liveness is its heartbeat, seen by every gateway.
VOLUME ["/models"]
ENTRYPOINT ["python", "-m", "regio_worker"]
