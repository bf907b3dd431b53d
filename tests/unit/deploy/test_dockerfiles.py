"""Static rules of the images in deploy/docker (README, "Deployment": DF001-DF013).

Dockerfiles are read as text: instructions are joined across line continuations, comments
dropped, and split into build stages at each FROM. No Docker engine is needed."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass

import pytest

from regio_common.settings import PROJECT_ROOT

DOCKER_DIR = PROJECT_ROOT / "deploy" / "docker"


@dataclass(frozen=True)
class ImageSpec:
    group: str  # the pyproject dependency group the image installs
    module: str  # python -m <module>
    source: str  # folder under services/
    port: int | None  # EXPOSEd port; None for the NATS-only worker
    health: str | None  # "http" (GET /health), "tcp", or None


IMAGES: dict[str, ImageSpec] = {
    "gateway": ImageSpec("gateway", "regio_gateway", "gateway", 8080, "http"),
    "dashboard-api": ImageSpec("dashboard", "regio_dashboard", "dashboard-api", 8081, "http"),
    "billing": ImageSpec("billing", "regio_billing", "billing", 50051, "tcp"),
    "worker-cpu": ImageSpec("worker", "regio_worker", "worker", None, None),
    "worker-cuda": ImageSpec("worker", "regio_worker", "worker", None, None),
}

# Packages an image must not install, per dependency group.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "gateway": ("llama-cpp-python", "psycopg", "gemma3"),
    "dashboard": ("llama-cpp-python", "gemma3"),
    # aiohttp is in every image since each service serves its ops listener (/health, /metrics).
    "billing": ("llama-cpp-python", "gemma3"),
    "worker": ("psycopg",),  # aiohttp: the engine that fronts an OpenAI-compatible server
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def args_of(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"

    stages: list[Stage] = []
    current: list[Instruction] | None = None
    image, name = "", None
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            if current is not None:
                stages.append(Stage(image, name, tuple(current)))
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
        else:
            assert current is not None, f"instruction before the first FROM: {line}"
            current.append(instruction)
    if current is not None:
        stages.append(Stage(image, name, tuple(current)))
    return stages


def stages_of(image: str) -> list[Stage]:
    return parse_dockerfile((DOCKER_DIR / f"{image}.Dockerfile").read_text())


def all_args(stage: Stage) -> str:
    return "\n".join(i.args for i in stage.instructions)


def group_requirements(group: str) -> list[str]:
    """The requirements of a pyproject dependency group, include-group resolved."""
    groups = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["dependency-groups"]
    requirements: list[str] = []
    for item in groups[group]:
        if isinstance(item, dict):
            requirements += group_requirements(item["include-group"])
        else:
            requirements.append(item)
    return requirements


def test_every_image_has_a_dockerfile_and_nothing_else_is_there() -> None:
    assert sorted(p.name for p in DOCKER_DIR.glob("*.Dockerfile")) == sorted(
        f"{name}.Dockerfile" for name in IMAGES
    )


def test_parser_joins_continuations_and_names_stages() -> None:
    stages = parse_dockerfile(
        "# c\nFROM a:1 AS build\nRUN x \\\n    # inner\n    && y\nFROM b:2 AS runtime\nUSER 1\n"
    )
    assert [(s.image, s.name) for s in stages] == [("a:1", "build"), ("b:2", "runtime")]
    assert stages[0].args_of("RUN") == ["x && y"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df001_multi_stage_with_named_stages(image: str) -> None:
    stages = stages_of(image)
    assert len(stages) >= 2
    assert all(s.name for s in stages), "every FROM names its stage (FROM … AS <name>)"
    assert stages[-1].name == "runtime"
    names = {s.name for s in stages}
    for stage in stages:
        for copy in stage.args_of("COPY"):
            match = re.search(r"--from=(\S+)", copy)
            if match:
                assert match.group(1) in names, f"COPY --from an unnamed stage: {copy}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df002_base_images_are_pinned(image: str) -> None:
    for stage in stages_of(image):
        assert "$" not in stage.image, "no ARG-templated base image: the tag must be readable"
        repository, _, tag = stage.image.rpartition(":")
        assert repository and tag, f"{stage.image} has no tag"
        assert tag != "latest", f"{stage.image} uses latest"
        assert "/" not in tag


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df003_runtime_runs_as_non_root(image: str) -> None:
    runtime = stages_of(image)[-1]
    users = runtime.args_of("USER")
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", "")
    last = [i.keyword for i in runtime.instructions]
    # Nothing runs as root after the USER switch except the process itself.
    assert "RUN" not in last[last.index("USER") :]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df004_pythonpath_and_entry_point(image: str) -> None:
    spec = IMAGES[image]
    runtime = stages_of(image)[-1]
    env = " ".join(runtime.args_of("ENV"))
    match = re.search(r"PYTHONPATH=(\S+)", env)
    assert match, "the runtime stage sets PYTHONPATH"
    assert match.group(1).split(":") == [
        "/app/services/common",
        f"/app/services/{spec.source}",
        "/app/build/proto",
    ]
    assert runtime.args_of("ENTRYPOINT") == [f'["python", "-m", "{spec.module}"]']


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df005_installs_only_its_dependency_group(image: str) -> None:
    spec = IMAGES[image]
    text = "\n".join(all_args(s) for s in stages_of(image))
    assert re.findall(r"--group[ =](\S+)", text) == [spec.group]
    installs = re.findall(r"pip install ([^&\n]*)", text)
    for install in installs:
        for package in FORBIDDEN[spec.group]:
            assert package not in install, f"{image} installs {package}"
    # and the group itself, include-groups resolved, does not pull them in
    requirements = " ".join(group_requirements(spec.group))
    for package in FORBIDDEN[spec.group]:
        assert package not in requirements


def test_df005_gateway_group_has_no_llama_cpp_or_psycopg() -> None:
    requirements = " ".join(group_requirements("gateway"))
    assert "llama-cpp-python" not in requirements
    assert "psycopg" not in requirements


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df006_stubs_are_generated_in_the_build_stage(image: str) -> None:
    *build, runtime = stages_of(image)
    assert any("grpc_tools.protoc" in all_args(s) for s in build)
    assert "grpc_tools" not in all_args(runtime)
    assert "grpcio-tools" not in all_args(runtime)
    assert any("/build/proto" in c for c in runtime.args_of("COPY"))


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df007_exposes_the_service_port(image: str) -> None:
    exposes = stages_of(image)[-1].args_of("EXPOSE")
    exposed = [int(port.split("/")[0]) for args in exposes for port in args.split()]
    spec = IMAGES[image]
    assert exposed == ([] if spec.port is None else [spec.port])


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df008_healthcheck_where_the_service_has_one(image: str) -> None:
    spec = IMAGES[image]
    checks = stages_of(image)[-1].args_of("HEALTHCHECK")
    if spec.health is None:
        assert checks == []
        return
    assert len(checks) == 1
    command = checks[0]
    assert "CMD" in command
    if spec.health == "http":
        assert "/health" in command
    else:
        assert "socket.create_connection" in command


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df009_apt_installs_are_minimal_and_cleaned(image: str) -> None:
    for stage in stages_of(image):
        for run in stage.args_of("RUN"):
            if "apt-get install" in run:
                assert "--no-install-recommends" in run
                assert "rm -rf /var/lib/apt/lists/*" in run
                assert "apt-get update" in run, "update and install in one layer"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_df010_no_add_no_baked_models_no_foreign_sources(image: str) -> None:
    spec = IMAGES[image]
    stages = stages_of(image)
    for stage in stages:
        assert stage.args_of("ADD") == [], "use COPY"
        for copy in stage.args_of("COPY"):
            assert ".gguf" not in copy
            assert not re.search(r"(^|\s)\.(\s|$)", copy), "COPY . copies the whole context"
            for folder in re.findall(r"services/([\w-]+)", copy):
                assert folder in ("common", spec.source), f"{image} copies services/{folder}"


@pytest.mark.parametrize("image", ["worker-cpu", "worker-cuda"])
def test_df011_workers_read_models_from_a_mounted_volume(image: str) -> None:
    runtime = stages_of(image)[-1]
    assert runtime.args_of("VOLUME") == ['["/models"]']
    assert "REGIO_MODELS_DIR=/models" in " ".join(runtime.args_of("ENV"))


def test_df012_cuda_worker_builds_llama_cpp_with_cuda() -> None:
    build, runtime = stages_of("worker-cuda")
    assert re.fullmatch(r"nvidia/cuda:[\w.]+-devel-[\w.]+", build.image)
    assert re.fullmatch(r"nvidia/cuda:[\w.]+-runtime-[\w.]+", runtime.image)
    # same CUDA version in both stages
    assert build.image.split(":")[1].split("-")[0] == runtime.image.split(":")[1].split("-")[0]
    install = next(r for r in build.args_of("RUN") if "--group worker" in r)
    assert re.search(r'CMAKE_ARGS="[^"]*-DGGML_CUDA=on', install)
    assert "REGIO_WORKER_N_GPU_LAYERS=-1" in " ".join(runtime.args_of("ENV"))


def test_df012_cpu_worker_does_not_build_cuda() -> None:
    text = (DOCKER_DIR / "worker-cpu.Dockerfile").read_text()
    assert "GGML_CUDA" not in text
    assert all(s.image.startswith("python:") for s in stages_of("worker-cpu"))


def test_df013_dockerignore_keeps_local_state_out_of_the_context() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".git", ".venv", ".regio", "build", ".mypy_cache", ".ruff_cache"):
        assert required in entries
    assert ".pytest_cache" in entries
    assert {"**/__pycache__", "__pycache__"} & entries


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_build_command_is_documented(image: str) -> None:
    command = f"docker build -f deploy/docker/{image}.Dockerfile -t regio/{image} ."
    assert command in (DOCKER_DIR / f"{image}.Dockerfile").read_text()
    assert command in (PROJECT_ROOT / "README.md").read_text()


def test_healthchecks_use_the_exec_form() -> None:
    # JSON exec form: no shell in the image is needed, and a typo fails here, not at run time.
    for image in IMAGES:
        for check in stages_of(image)[-1].args_of("HEALTHCHECK"):
            command = json.loads(check.split("CMD", 1)[1])
            assert isinstance(command, list)
            assert command[:2] == ["python", "-c"]
            compile(command[2], "<healthcheck>", "exec")
