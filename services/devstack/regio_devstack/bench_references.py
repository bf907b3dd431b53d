"""The reference servers of `make bench-model`, made on first use outside the repository's
sources (in `.regio/bench/`, reused by later runs):

- llama.cpp's own `llama-server`, built with cmake from the `vendor/llama.cpp` folder of the
  llama-cpp-python source distribution of the installed version, so both run the same llama.cpp
  (about 8 minutes on 2 cores, once);
- llama-cpp-python's OpenAI-compatible server (`llama_cpp.server`), in its own virtualenv with
  the `server` extra, from the same pinned llama-cpp-python (pip reuses its cached wheel)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python"


def installed_version() -> str:
    return importlib.metadata.version(LLAMA_CPP_PYTHON)


def llama_server_binary(cache_dir: Path, say: Callable[[str], None]) -> Path:
    """Path of a `llama-server` built from the installed llama-cpp-python's llama.cpp."""
    version = installed_version()
    root = cache_dir / f"llama-server-{version}"
    binary = root / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    say(f"building llama.cpp's llama-server {version} from source (once, ~8 minutes)...")
    source = _vendored_llama_cpp(root, version)
    build = root / "build"
    jobs = str(os.cpu_count() or 1)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build),
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=ON",
            "-DBUILD_SHARED_LIBS=OFF",
        ]
    )
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs])
    if not binary.exists():
        raise RuntimeError(f"the build finished without {binary}")
    return binary


def _vendored_llama_cpp(root: Path, version: str) -> Path:
    source = root / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    downloads = root / "sdist"
    downloads.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(downloads),
            f"{LLAMA_CPP_PYTHON}=={version}",
        ]
    )
    archive = next(downloads.glob("llama_cpp_python-*.tar.gz"))
    prefix = archive.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        for member in members:
            member.name = member.name[len(prefix) :]
        tar.extractall(source, members=[m for m in members if m.name], filter="data")
    return source


def llama_cpp_python_server(cache_dir: Path, say: Callable[[str], None]) -> Path:
    """Python interpreter of a virtualenv holding `llama-cpp-python[server]` (same version)."""
    version = installed_version()
    venv = cache_dir / f"llama-cpp-python-server-{version}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return python
    say(f"installing llama-cpp-python[server]=={version} into {venv} (once)...")
    _run([sys.executable, "-m", "venv", "--clear", str(venv)])
    _run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    _run([str(python), "-m", "pip", "install", "--quiet", f"{LLAMA_CPP_PYTHON}[server]=={version}"])
    stamp.touch()
    return python


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True)
