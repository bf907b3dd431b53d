"""Find the GGUF file of a route on this machine, assembling it from its PyPI package when the
catalogue names one (first-start work of a few seconds; later starts only verify it)."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from types import ModuleType

import structlog

from regio_common.catalogue import ModelSource

log = structlog.get_logger()


class ModelFileError(RuntimeError):
    """The route's model file cannot be found or built."""


def resolve_model_path(source: ModelSource, models_dir: Path) -> Path:
    """The local GGUF path of `source`; a relative `gguf_path` is read from `models_dir`."""
    if source.gguf_path is not None:
        path = source.gguf_path if source.gguf_path.is_absolute() else models_dir / source.gguf_path
        if not path.is_file():
            raise ModelFileError(
                f"The model file {path} does not exist; put the GGUF there or fix `gguf_path` "
                "in the catalogue."
            )
        return path
    if source.gguf_package is not None:
        return assemble_packaged_model(source.gguf_package, models_dir)
    raise ModelFileError("The model source names neither gguf_path nor gguf_package.")


def _import_model_package(distribution: str) -> ModuleType:
    module_name = distribution.replace("-", "_")
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ModelFileError(
            f"The model package {distribution!r} is not installed (module {module_name!r}); "
            f"install it with `pip install {distribution}`."
        ) from error


def assemble_packaged_model(distribution: str, models_dir: Path) -> Path:
    """Build `models_dir/<MODEL_NAME>` from the package's chunks once; idempotent.

    The file is written under a temporary name and renamed, so an interrupted first start never
    leaves a truncated model behind, and two workers starting together do not collide."""
    package = _import_model_package(distribution)
    target = models_dir / str(package.MODEL_NAME)
    models_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if target.exists():
        try:
            package.assemble(output_path=target)  # verifies the sha256, writes nothing
            log.info("model_verified", path=str(target), seconds=_since(started))
            return target
        except FileExistsError:
            log.warning("model_file_corrupt_rebuilding", path=str(target))
    log.info("model_assembling", package=distribution, path=str(target))
    partial = models_dir / f".{target.name}.{os.getpid()}.partial"
    partial.unlink(missing_ok=True)
    try:
        package.assemble(output_path=partial)
        os.replace(partial, target)
    except (OSError, ValueError) as error:
        raise ModelFileError(
            f"Could not assemble the model of {distribution!r} into {target}: {error}"
        ) from error
    finally:
        partial.unlink(missing_ok=True)
    log.info("model_assembled", path=str(target), seconds=_since(started))
    return target


def _since(started: float) -> float:
    return round(time.monotonic() - started, 2)
