"""Start-up and shut-down of one worker process: settings and catalogue, model, engine, NATS,
serving until SIGTERM/SIGINT, then a graceful drain."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import structlog
from nats.aio.client import Client

from regio_common.catalogue import Catalogue, Route
from regio_common.nats_connection import connect_nats
from regio_common.ops_server import NotReady, OpsServer
from regio_worker.engine.base import Engine
from regio_worker.engine.reasoning import ReasoningMarkers
from regio_worker.engine.scripted import ScriptedEngine
from regio_worker.metrics import WorkerMetrics
from regio_worker.model_files import resolve_model_path
from regio_worker.protocol import WorkerIdentity
from regio_worker.server import ReaderCheckTiming, WorkerServer
from regio_worker.settings import WorkerSettings

log = structlog.get_logger()

SCRIPTED_PIECE_DELAY_SECONDS = 0.02
START_UP_CANCEL_GRACE_SECONDS = 5.0


class StartupError(RuntimeError):
    """The worker cannot start with this configuration."""


def load_route(settings: WorkerSettings) -> Route:
    catalogue = Catalogue.load(settings.catalogue_path)
    route = catalogue.routes.get(settings.worker_route)
    if route is None:
        raise StartupError(
            f"Route {settings.worker_route!r} is not in the catalogue {settings.catalogue_path} "
            f"(routes: {sorted(catalogue.routes)})."
        )
    return route


def build_engine(settings: WorkerSettings, route: Route) -> Engine:
    """Blocking: may assemble the model file and loads the model."""
    if settings.worker_engine == "scripted":
        return ScriptedEngine(delay_seconds=SCRIPTED_PIECE_DELAY_SECONDS)
    if settings.worker_engine == "openai_proxy":
        return build_openai_proxy_engine(settings)
    # Imported here: a scripted worker needs no llama.cpp library.
    from regio_worker.engine.llama_batched import BatchedLlamaEngine, GpuPlacement
    from regio_worker.engine.multimodal import MediaTokenBounds

    model_path = resolve_model_path(route.source, settings.models_dir)
    n_ctx = settings.worker_n_ctx or route.context_length
    log.info(
        "model_loading",
        path=str(model_path),
        n_ctx=n_ctx,
        threads=settings.worker_threads,
        slots=settings.worker_slots,
    )
    return BatchedLlamaEngine(
        model_path,
        chat_format=route.source.chat_format,
        n_ctx=n_ctx,
        n_threads=settings.worker_threads,
        slots=settings.worker_slots,
        n_batch=settings.worker_n_batch,
        gpu=GpuPlacement(
            n_gpu_layers=settings.worker_n_gpu_layers,
            split_mode=settings.worker_split_mode,
            main_gpu=settings.worker_main_gpu,
            tensor_split=settings.worker_tensor_split,
            flash_attention=settings.worker_flash_attention,
        ),
        reasoning_markers=reasoning_markers(route),
        mmproj_path=projector_path(route, settings.models_dir),
        media_bounds=MediaTokenBounds(route.tokens_per_image, route.tokens_per_audio_clip),
    )


def projector_path(route: Route, models_dir: Path) -> Path | None:
    """The route's multimodal projector GGUF (relative: in `models_dir`); None: text only."""
    path = route.source.mmproj_path
    if path is None:
        if route.capabilities.vision or route.capabilities.audio:
            log.warning(
                "no_multimodal_projector",
                detail="the route advertises vision or audio, but has no source.mmproj_path: "
                "this worker refuses media (unsupported_content)",
            )
        return None
    path = path if path.is_absolute() else models_dir / path
    if not path.is_file():
        raise StartupError(
            f"The multimodal projector {path} does not exist; put the GGUF there or fix "
            "`mmproj_path` in the catalogue."
        )
    return path


def reasoning_markers(route: Route) -> ReasoningMarkers | None:
    """How the route's model marks its reasoning; None: it does not reason."""
    source = route.source
    if source.thinking_start is None or source.thinking_end is None:
        return None
    return ReasoningMarkers(source.thinking_start, source.thinking_end, source.thinking_switch)


def build_openai_proxy_engine(settings: WorkerSettings) -> Engine:
    # Imported here: only this engine needs aiohttp.
    from regio_worker.engine.openai_proxy import OpenAIProxyEngine

    if not settings.upstream_base_url:  # settings validation already requires it
        raise StartupError("REGIO_UPSTREAM_BASE_URL is required with the openai_proxy engine.")
    api_key = settings.upstream_api_key
    log.info(
        "upstream_configured",
        model=settings.upstream_model,
        slots=settings.upstream_max_concurrency,
        api_key=api_key is not None,
    )
    return OpenAIProxyEngine(
        settings.upstream_base_url,
        api_key=api_key.get_secret_value() if api_key is not None else None,
        model=settings.upstream_model,
        max_concurrency=settings.upstream_max_concurrency,
        timeout_seconds=settings.upstream_timeout_seconds,
        answer_timeout_seconds=settings.upstream_answer_timeout_seconds,
    )


class SignalHandling:
    """SIGTERM/SIGINT: during start-up, give up at once (nothing was accepted yet, and start-up
    may wait on NATS forever); once serving, ask for a graceful drain."""

    def __init__(
        self,
        exit_process: Callable[[int], object] = os._exit,
        start_up_cancel_grace_seconds: float = START_UP_CANCEL_GRACE_SECONDS,
    ) -> None:
        self.stop_requested = asyncio.Event()
        self._serving = False
        self._main_task = asyncio.current_task()
        self._exit_process = exit_process
        self._grace_seconds = start_up_cancel_grace_seconds
        self._loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self.on_signal)

    def serving(self) -> None:
        self._serving = True

    def on_signal(self) -> None:
        if self._serving:
            if self.stop_requested.is_set():
                log.info("already_draining")
            self.stop_requested.set()
            return
        log.info("start_up_cancelled")
        if self._main_task is not None:
            self._main_task.cancel()
        # nats-py swallows CancelledError in places (its connect loop retries forever): if the
        # cancellation is lost, leave anyway. Never fires when start-up ends in time (the loop
        # is closed by then).
        self._loop.call_later(self._grace_seconds, self._exit_now)

    def _exit_now(self) -> None:
        log.warning("start_up_cancellation_ignored_exiting")
        sys.stderr.flush()
        self._exit_process(0)


class WorkerReadiness:
    """What the ops listener's /ready reports while the worker starts: the model is loaded, and
    NATS is connected."""

    def __init__(self) -> None:
        self.model_loaded = False
        self.nats: Client | None = None

    async def check_model(self) -> None:
        if not self.model_loaded:
            raise NotReady("model not loaded yet")

    async def check_nats(self) -> None:
        if self.nats is None:
            raise NotReady("not connected yet")
        if not self.nats.is_connected:
            raise NotReady("not connected")


async def run_worker(settings: WorkerSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return. A signal during start-up raises
    asyncio.CancelledError instead."""
    signals = SignalHandling()
    identity = WorkerIdentity(
        settings.resolved_worker_id, settings.worker_country, settings.worker_route
    )
    route = load_route(settings)
    metrics = WorkerMetrics(identity.route)
    readiness = WorkerReadiness()
    # Up before the model loads (minutes for a large one): liveness answers meanwhile.
    ops = OpsServer(
        metrics.registry, {"nats": readiness.check_nats, "model": readiness.check_model}
    )
    await ops.start(settings.worker_metrics_host, settings.worker_metrics_port)
    try:
        await _load_and_serve(settings, identity, route, signals, metrics, readiness)
    finally:
        await ops.stop()
    log.info("worker_stopped")


async def _load_and_serve(
    settings: WorkerSettings,
    identity: WorkerIdentity,
    route: Route,
    signals: SignalHandling,
    metrics: WorkerMetrics,
    readiness: WorkerReadiness,
) -> None:
    engine = await asyncio.to_thread(build_engine, settings, route)
    readiness.model_loaded = True
    try:
        nc = await connect_nats(settings.nats_url, name=f"regio-worker-{identity.worker_id}")
        readiness.nats = nc
        server = WorkerServer(
            nc,
            engine,
            identity,
            queue_limit=settings.worker_queue_limit,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            metrics=metrics,
            stream_replicas=settings.nats_stream_replicas,
            reader_check=ReaderCheckTiming(
                settings.reader_check_interval_seconds, settings.reader_check_timeout_seconds
            ),
            usage_linger_seconds=settings.usage_publish_linger_seconds,
        )
        await server.start()
        signals.serving()
        log.info(
            "worker_ready",
            route=identity.route,
            country=identity.country,
            worker_id=identity.worker_id,
            engine=settings.worker_engine,
            slots=engine.slots_total,
        )
        await signals.stop_requested.wait()
        log.info("worker_draining")
        await server.drain()
        await nc.drain()
    finally:
        await engine.close()
