"""Worker configuration (env prefix REGIO_, e.g. REGIO_WORKER_ROUTE=liv)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from regio_common.ids import new_worker_id
from regio_common.settings import (
    PROJECT_ROOT,
    CatalogueSettings,
    LoggingSettings,
    NatsSettings,
)

EngineName = Literal["llama_cpp", "scripted", "openai_proxy"]


def _cpu_count() -> int:
    return os.cpu_count() or 1


class WorkerSettings(LoggingSettings, NatsSettings, CatalogueSettings):
    worker_route: str = Field("liv", description="Catalogue route this worker serves.")
    worker_country: str = Field("de", description="Country this worker runs in (data residency).")
    worker_id: str | None = Field(
        None,
        description="Unique worker id, used in cancel subjects and heartbeats "
        "(default: `<country>-<route>-<random hex>`, new at every start).",
    )
    models_dir: Path = Field(
        PROJECT_ROOT / ".regio" / "models",
        description="Folder for GGUF files: packaged models are assembled here on first start, "
        "and a relative `gguf_path` of the catalogue is read from here.",
    )
    worker_threads: int = Field(
        default_factory=_cpu_count,
        gt=0,
        description="CPU threads llama.cpp uses for generation (default: the machine's cores).",
    )
    worker_n_ctx: int | None = Field(
        None,
        gt=0,
        description="Context window in tokens, prompt plus completion (default: the route's "
        "context_length); llama.cpp rounds it up to a multiple of 256.",
    )
    worker_n_gpu_layers: int = Field(
        0,
        description="Model layers offloaded to the GPU; -1 offloads all of them. Needs a CUDA "
        'build of llama-cpp-python (installed with CMAKE_ARGS="-DGGML_CUDA=on"); the CPU build '
        "ignores it.",
    )
    worker_slots: int = Field(
        4,
        ge=1,
        le=256,
        description="Generations the llama.cpp engine decodes together (continuous batching); "
        "each gets the full context window, and the KV cache is sized for all of them.",
    )
    worker_n_batch: int = Field(
        512,
        ge=32,
        description="Tokens per llama_decode step: one per running generation plus chunks of "
        "new prompts.",
    )
    worker_split_mode: Literal["none", "layer", "row"] = Field(
        "layer",
        description="How a model spreads over several GPUs: `layer` (layers and KV cache split), "
        "`row` (tensor parallelism where supported) or `none` (only REGIO_WORKER_MAIN_GPU).",
    )
    worker_main_gpu: int = Field(
        0,
        ge=0,
        description="The GPU used with split mode `none` (and for small tensors with `row`).",
    )
    worker_tensor_split: list[float] | None = Field(
        None,
        description="Share of the model per GPU, as a JSON list (e.g. `[3, 1]`); default: by "
        "free memory.",
    )
    worker_flash_attention: bool | None = Field(
        None,
        description="Force llama.cpp's flash attention on or off (default: llama.cpp decides; "
        "worth enabling on GPUs).",
    )
    worker_queue_limit: int = Field(
        16,
        ge=0,
        description="Requests that may wait for a free slot; beyond that new ones are rejected "
        "so that the gateway tries another worker.",
    )
    worker_metrics_port: int = Field(
        9465,
        ge=0,
        description="Port of the worker's ops listener: `/health`, `/ready` (NATS connected, "
        "model loaded) and Prometheus `/metrics` (0: not served).",
    )
    worker_metrics_host: str = Field(
        "0.0.0.0",
        description="Address of the worker's ops listener (all interfaces by default, so that "
        "the kubelet's probes and Prometheus reach it: the worker has no other listener).",
    )
    heartbeat_interval_ms: int = Field(
        1000, gt=0, description="Milliseconds between two heartbeats of this worker."
    )
    usage_publish_linger_seconds: float = Field(
        0.02,
        ge=0,
        le=1,
        description="How long a usage message that is not full waits for the records of "
        "requests finishing meanwhile before it goes to JetStream: fewer stored messages, "
        "acknowledgements and deliveries to billing at moderate load. A worker killed "
        "outright loses this window's records (their holds expire uncharged). 0: at once.",
    )
    reader_check_interval_seconds: float = Field(
        1.0,
        gt=0,
        description="While streaming, how often the worker checks that the gateway reading the "
        "stream is still there (also at the first token); a gone gateway stops the generation "
        "and only what its client received is billed.",
    )
    reader_check_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long one such check waits for the gateway's answer (a slow answer "
        "proves nothing; only NATS's immediate 'no responders' means gone).",
    )
    worker_engine: EngineName = Field(
        "llama_cpp",
        description="`llama_cpp` runs the route's model; `openai_proxy` fronts an "
        "OpenAI-compatible server in the region (REGIO_UPSTREAM_*); `scripted` answers with "
        "fixed text (tests of the serving path only).",
    )
    upstream_base_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="openai_proxy: base URL of the upstream OpenAI-compatible API, e.g. "
        "`http://127.0.0.1:8000/v1` (required with that engine).",
    )
    upstream_api_key: SecretStr | None = Field(
        None, description="openai_proxy: bearer token for the upstream, if it needs one."
    )
    upstream_model: str | None = Field(
        None,
        description="openai_proxy: model name sent upstream (default: none sent; llama-server "
        "and vLLM then use the model they serve).",
    )
    upstream_max_concurrency: int = Field(
        4,
        gt=0,
        description="openai_proxy: generations sent upstream at the same time (the worker's "
        "slots); match the upstream's parallel slots / batch size.",
    )
    upstream_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="openai_proxy: seconds allowed to connect, and between two reads of the "
        "upstream's streamed answer (not for the whole generation).",
    )
    upstream_answer_timeout_seconds: float = Field(
        600.0,
        gt=0,
        description="openai_proxy: seconds allowed for a whole non-streamed answer (asked for "
        "when the client does not stream: the upstream answers once the generation is done).",
    )

    @model_validator(mode="after")
    def _default_worker_id(self) -> WorkerSettings:
        if not self.worker_id:
            self.worker_id = new_worker_id(self.worker_country, self.worker_route)
        return self

    @model_validator(mode="after")
    def _upstream_needed_by_proxy(self) -> WorkerSettings:
        if self.worker_engine == "openai_proxy" and not self.upstream_base_url:
            raise ValueError("REGIO_UPSTREAM_BASE_URL is required with the openai_proxy engine")
        return self

    @property
    def resolved_worker_id(self) -> str:
        """The worker id (always set after validation; typed as plain `str`)."""
        if self.worker_id is None:  # unreachable after validation
            raise RuntimeError("worker_id was not resolved")
        return self.worker_id
