"""Worker settings: defaults, REGIO_ environment variables, generated worker id."""

from __future__ import annotations

import os
import re

import pytest
from pydantic import ValidationError

from regio_common.settings import PROJECT_ROOT
from regio_worker.settings import WorkerSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REGIO_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = WorkerSettings()
    assert settings.worker_route == "liv"
    assert settings.worker_country == "de"
    assert settings.models_dir == PROJECT_ROOT / ".regio" / "models"
    assert settings.worker_threads == (os.cpu_count() or 1)
    assert settings.worker_n_ctx is None
    assert settings.worker_n_gpu_layers == 0
    assert settings.worker_queue_limit == 16
    assert settings.heartbeat_interval_ms == 1000
    assert settings.worker_engine == "llama_cpp"


def test_worker_id_is_generated_per_instance_from_country_and_route() -> None:
    first, second = WorkerSettings(), WorkerSettings()
    assert re.fullmatch(r"de-liv-[0-9a-f]{8}", first.resolved_worker_id)
    assert first.worker_id != second.worker_id


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIO_WORKER_ROUTE", "tiny")
    monkeypatch.setenv("REGIO_WORKER_COUNTRY", "nl")
    monkeypatch.setenv("REGIO_WORKER_N_CTX", "2048")
    monkeypatch.setenv("REGIO_WORKER_N_GPU_LAYERS", "-1")
    monkeypatch.setenv("REGIO_WORKER_ENGINE", "scripted")
    monkeypatch.setenv("REGIO_MODELS_DIR", "/tmp/models")
    settings = WorkerSettings()
    assert settings.worker_n_ctx == 2048
    assert settings.worker_n_gpu_layers == -1
    assert settings.worker_engine == "scripted"
    assert str(settings.models_dir) == "/tmp/models"
    assert settings.resolved_worker_id.startswith("nl-tiny-")


def test_explicit_worker_id_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIO_WORKER_ID", "de-liv-fixed")
    assert WorkerSettings().resolved_worker_id == "de-liv-fixed"


def test_unknown_engine_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIO_WORKER_ENGINE", "vllm")
    with pytest.raises(ValidationError):
        WorkerSettings()


def test_every_field_is_documented() -> None:
    undocumented = [
        name for name, field in WorkerSettings.model_fields.items() if not field.description
    ]
    assert undocumented == []


def test_openai_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIO_WORKER_ENGINE", "openai_proxy")
    monkeypatch.setenv("REGIO_UPSTREAM_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("REGIO_UPSTREAM_API_KEY", "sk-upstream")
    monkeypatch.setenv("REGIO_UPSTREAM_MODEL", "qwen")
    monkeypatch.setenv("REGIO_UPSTREAM_MAX_CONCURRENCY", "8")
    monkeypatch.setenv("REGIO_UPSTREAM_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("REGIO_UPSTREAM_ANSWER_TIMEOUT_SECONDS", "120")
    settings = WorkerSettings()
    assert settings.upstream_base_url == "http://127.0.0.1:8000/v1"
    assert settings.upstream_api_key is not None
    assert settings.upstream_api_key.get_secret_value() == "sk-upstream"
    assert "sk-upstream" not in repr(settings)
    assert (settings.upstream_model, settings.upstream_max_concurrency) == ("qwen", 8)
    assert settings.upstream_timeout_seconds == 2.5
    assert settings.upstream_answer_timeout_seconds == 120


def test_openai_proxy_needs_an_upstream_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIO_WORKER_ENGINE", "openai_proxy")
    with pytest.raises(ValidationError):
        WorkerSettings()
    monkeypatch.setenv("REGIO_UPSTREAM_BASE_URL", "127.0.0.1:8000")  # no scheme
    with pytest.raises(ValidationError):
        WorkerSettings()


def test_build_engine_makes_the_proxy_without_io(monkeypatch: pytest.MonkeyPatch) -> None:
    from regio_common.catalogue import Catalogue
    from regio_common.settings import DEFAULT_CATALOGUE
    from regio_worker.app import build_engine
    from regio_worker.engine.openai_proxy import OpenAIProxyEngine

    monkeypatch.setenv("REGIO_WORKER_ENGINE", "openai_proxy")
    monkeypatch.setenv("REGIO_UPSTREAM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("REGIO_UPSTREAM_MAX_CONCURRENCY", "3")
    engine = build_engine(WorkerSettings(), Catalogue.load(DEFAULT_CATALOGUE).routes["liv"])
    assert isinstance(engine, OpenAIProxyEngine)
    assert engine.slots_total == 3
