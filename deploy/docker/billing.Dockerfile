# syntax=docker/dockerfile:1
# Regio billing image. Build from the repository root:
#   docker build -f deploy/docker/billing.Dockerfile -t regio/billing .
# Stage 1 installs only the `billing` dependency group into /opt/venv and generates the protobuf
# stubs; stage 2 is a slim runtime with the venv, the source folders and the stubs.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# pip >= 25.1 understands PEP 735 dependency groups (--group).
RUN python -m venv /opt/venv && /opt/venv/bin/pip install "pip>=25.1" \
    && python -m venv /opt/protoc && /opt/protoc/bin/pip install "pip>=25.1"
COPY pyproject.toml ./
RUN /opt/venv/bin/pip install --group billing
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
COPY services/billing/ services/billing/
COPY config/ config/
RUN /opt/venv/bin/python -m compileall -q services/common services/billing build/proto

FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 regio \
    && useradd --system --uid 10001 --gid regio --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin regio
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/services/common /app/services/common
COPY --from=build /src/services/billing /app/services/billing
COPY --from=build /src/build/proto /app/build/proto
COPY --from=build /src/config /app/config
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/services/common:/app/services/billing:/app/build/proto \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REGIO_BILLING_LISTEN_ADDRESS=0.0.0.0:50051
USER 10001:10001
EXPOSE 50051
# No gRPC health service yet: the check is that the gRPC port accepts connections.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, socket; port = os.environ.get(\"REGIO_BILLING_LISTEN_ADDRESS\", \"0.0.0.0:50051\").rsplit(\":\", 1)[1]; socket.create_connection((\"127.0.0.1\", int(port)), timeout=2).close()"]
ENTRYPOINT ["python", "-m", "regio_billing"]
