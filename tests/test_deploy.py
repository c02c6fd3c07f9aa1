"""The deployment files, checked without a Docker engine (none runs on CI).

scripts/check_deploy.py reads docker-compose.yml, docker-compose.gpu.yml, .env.example and the
Dockerfile; each check here passes on the repository and, on a copy broken in one place, names
what is broken. The health-check commands and the model-pull script run for real where their
programs exist here (bash against a real Chroma server, Python against a real HTTP server).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_FILES = [
    "docker-compose.yml",
    "docker-compose.gpu.yml",
    ".env.example",
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "deploy/compose.schema.json",
]


def _load_check_deploy() -> Any:
    spec = importlib.util.spec_from_file_location("check_deploy", ROOT / "scripts/check_deploy.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_deploy = _load_check_deploy()


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """A copy of the deployment files, to break one thing at a time."""
    for name in DEPLOY_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy/kubernetes", tmp_path / "deploy/kubernetes")
    return tmp_path


def edit_yaml(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path.name}: the test is out of date"
    path.write_text(text.replace(old, new, 1))


def only_problem(problems: list[str], *words: str) -> None:
    """Exactly one problem, and it names what is wrong."""
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0], problems


# --- the repository passes -----------------------------------------------------------------


def test_the_deployment_files_pass_every_check() -> None:
    assert check_deploy.run_checks(ROOT) == []


def test_the_command_line_exits_0_on_the_repo_and_1_on_a_broken_copy(deploy_copy: Path) -> None:
    script = str(ROOT / "scripts/check_deploy.py")
    good = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr

    edit_text(deploy_copy / "docker-compose.yml", "127.0.0.1:${HEARTH_PORT", "${HEARTH_PORT")
    bad = subprocess.run(
        [sys.executable, script, "--root", str(deploy_copy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "FAIL service 'api' publishes" in bad.stdout


def test_the_compose_file_is_what_the_issue_asks_for() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"api", "ollama", "mongo", "chroma", "ollama-pull"} <= set(services)
    api = services["api"]
    assert api["build"]["dockerfile"] == "Dockerfile"
    assert api["environment"]["HEARTH_PROFILE"] == "compose"
    assert api["depends_on"] == {
        "ollama": {"condition": "service_healthy"},
        "ollama-pull": {"condition": "service_completed_successfully"},
        "mongo": {"condition": "service_healthy"},
        "chroma": {"condition": "service_healthy"},
    }
    assert api["environment"]["HEARTH_HOST"] == "0.0.0.0"  # inside the container only:
    assert api["ports"] == ["127.0.0.1:${HEARTH_PORT:-8000}:8000"]  # published on loopback
    # The one-shot pull runs docker/pull-models.sh once Ollama answers, for the API's models.
    pull = services["ollama-pull"]
    assert pull["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    assert pull["entrypoint"] == ["/bin/sh", "/pull-models.sh"]
    assert "./docker/pull-models.sh:/pull-models.sh:ro" in pull["volumes"]
    for key in ("HEARTH_OLLAMA_MODEL", "HEARTH_EMBEDDING_BACKEND", "HEARTH_OLLAMA_EMBEDDING_MODEL"):
        assert pull["environment"][key] == api["environment"][key], key
    # Every stateful service keeps its data on a named volume.
    volumes = set(doc["volumes"])
    for name, target in [
        ("api", "/data"),
        ("ollama", "/root/.ollama"),
        ("mongo", "/data/db"),
        ("chroma", "/data"),
    ]:
        mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        assert mounts[target] in volumes, (name, mounts)
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    devices = gpu["services"]["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


# --- each check catches what it is for -----------------------------------------------------


def test_the_schema_rejects_a_misspelt_key(deploy_copy: Path) -> None:
    edit_yaml(
        deploy_copy / "docker-compose.yml",
        lambda d: d["services"]["mongo"]["healthcheck"].update(intervall="10s"),
    )
    only_problem(
        check_deploy.run_checks(deploy_copy),
        "docker-compose.yml",
        "services/mongo/healthcheck",
        "intervall",
    )


def test_the_schema_rejects_a_wrong_type(deploy_copy: Path) -> None:
    edit_yaml(
        deploy_copy / "docker-compose.gpu.yml",
        lambda d: d["services"]["ollama"]["deploy"]["resources"].update(reservations=[]),
    )
    only_problem(check_deploy.run_checks(deploy_copy), "docker-compose.gpu.yml", "reservations")


def test_the_schema_rejects_an_unknown_depends_on_condition(deploy_copy: Path) -> None:
    edit_yaml(
        deploy_copy / "docker-compose.yml",
        lambda d: d["services"]["api"]["depends_on"]["mongo"].update(condition="service_ready"),
    )
    problems = check_deploy.run_checks(deploy_copy)
    assert problems and all("depends_on/mongo" in p for p in problems), problems


def test_a_missing_depends_on_target_fails(deploy_copy: Path) -> None:
    edit_yaml(
        deploy_copy / "docker-compose.yml",
        lambda d: d["services"]["api"]["depends_on"].update(postgres={"condition": "service_started"}),
    )
    only_problem(check_deploy.run_checks(deploy_copy), "'api' depends on 'postgres'")


def test_a_renamed_service_breaks_its_dependents(deploy_copy: Path) -> None:
    def rename(doc: dict[str, Any]) -> None:
        doc["services"]["mongodb"] = doc["services"].pop("mongo")

    edit_yaml(deploy_copy / "docker-compose.yml", rename)
    only_problem(check_deploy.run_checks(deploy_copy), "depends on 'mongo'")


def test_waiting_for_health_needs_a_healthcheck(deploy_copy: Path) -> None:
    edit_yaml(deploy_copy / "docker-compose.yml", lambda d: d["services"]["chroma"].pop("healthcheck"))
    problems = check_deploy.run_checks(deploy_copy)
    assert len(problems) == 2, problems
    assert any("'api' waits for 'chroma' to be healthy" in p for p in problems)
    assert any("'chroma' has no healthcheck" in p for p in problems)


def test_the_override_file_must_extend_a_real_service(deploy_copy: Path) -> None:
    edit_text(deploy_copy / "docker-compose.gpu.yml", "  ollama:", "  olama:")
    problems = check_deploy.run_checks(deploy_copy)
    # The stray service then also lacks an image and a health check; the cause comes first.
    assert problems[0] == ("docker-compose.gpu.yml: overrides service 'olama', which the base file lacks"), (
        problems
    )


def test_a_one_shot_service_must_not_restart(deploy_copy: Path) -> None:
    edit_yaml(
        deploy_copy / "docker-compose.yml",
        lambda d: d["services"]["ollama-pull"].update(restart="unless-stopped"),
    )
    only_problem(check_deploy.run_checks(deploy_copy), "one-shot service 'ollama-pull'")


@pytest.mark.parametrize(
    "ports",
    [
        ["8000:8000"],
        ["0.0.0.0:8000:8000"],
        ["8000"],
        [{"target": 8000, "published": 8000}],
        [{"target": 8000, "published": 8000, "host_ip": "0.0.0.0"}],
    ],
)
def test_a_port_published_beyond_loopback_fails(deploy_copy: Path, ports: list[Any]) -> None:
    edit_yaml(deploy_copy / "docker-compose.yml", lambda d: d["services"]["mongo"].update(ports=ports))
    only_problem(check_deploy.run_checks(deploy_copy), "'mongo' publishes", "127.0.0.1")


def test_loopback_ports_pass() -> None:
    doc = {
        "services": {
            "a": {
                "ports": [
                    "127.0.0.1:${HEARTH_PORT:-8000}:8000",
                    "[::1]:9000:9000",
                    {"target": 1, "published": 2, "host_ip": "127.0.0.1"},
                    {"target": 3},
                ]
            }
        }
    }
    assert check_deploy.check_ports(doc) == []


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("mongo:8.0.20", True),
        ("ollama/ollama:0.17.7", True),
        ("python:3.11.15-slim-bookworm", True),
        ("python:3.11.15-slim-bookworm@sha256:" + "a" * 64, True),
        ("chromadb/chroma@sha256:" + "0" * 64, True),
        ("registry.local:5000/team/chroma:1.5.9", True),
        ("mongo", False),
        ("mongo:latest", False),
        ("python:3.11-slim", False),
        ("ollama/ollama:rocm", False),
        ("registry.local:5000/team/chroma", False),
    ],
)
def test_image_pinning(image: str, pinned: bool) -> None:
    assert check_deploy.image_is_pinned(image) is pinned


def test_a_floating_compose_image_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / "docker-compose.yml", "image: mongo:8.0.20", "image: mongo:latest")
    only_problem(check_deploy.run_checks(deploy_copy), "'mongo'", "mongo:latest")


def test_a_setting_missing_from_env_example_fails(deploy_copy: Path) -> None:
    text = (deploy_copy / ".env.example").read_text()
    lines = [line for line in text.splitlines() if "HEARTH_TOP_K=" not in line]
    (deploy_copy / ".env.example").write_text("\n".join(lines) + "\n")
    only_problem(check_deploy.run_checks(deploy_copy), "HEARTH_TOP_K", "config.py")


def test_every_setting_in_config_is_documented() -> None:
    from hearth.config import Settings

    text = (ROOT / ".env.example").read_text()
    for field in Settings.model_fields:
        assert f"# HEARTH_{field.upper()}=" in text, field


def test_a_wrong_default_in_env_example_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / ".env.example", "# HEARTH_TOP_K=4", "# HEARTH_TOP_K=5")
    only_problem(check_deploy.run_checks(deploy_copy), "HEARTH_TOP_K='5'", "default", "4")


def test_an_unknown_setting_in_env_example_fails(deploy_copy: Path) -> None:
    edit_text(
        deploy_copy / ".env.example",
        "# HEARTH_TOP_K=4",
        "# HEARTH_TOP_K=4\n# Misspelt.\n# HEARTH_TOPK=4",
    )
    only_problem(check_deploy.run_checks(deploy_copy), "HEARTH_TOPK", "does not read")


def test_a_setting_without_a_comment_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / ".env.example", "# Number of document chunks retrieved per question.\n", "")
    only_problem(check_deploy.run_checks(deploy_copy), "HEARTH_TOP_K", "no comment")


def test_a_compose_variable_missing_from_env_example_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / "docker-compose.yml", "${OLLAMA_KEEP_ALIVE:-30m}", "${OLLAMA_KEEPALIVE:-30m}")
    only_problem(check_deploy.run_checks(deploy_copy), "OLLAMA_KEEPALIVE")


def test_a_compose_default_that_disagrees_with_config_fails(deploy_copy: Path) -> None:
    edit_text(
        deploy_copy / "docker-compose.yml",
        "${HEARTH_OLLAMA_MODEL:-llama3.1:8b}",
        "${HEARTH_OLLAMA_MODEL:-llama3:8b}",
    )
    only_problem(check_deploy.run_checks(deploy_copy), "HEARTH_OLLAMA_MODEL", "llama3:8b")


def test_a_misspelt_setting_in_the_compose_file_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / "docker-compose.yml", "HEARTH_DATA_DIR: /data", "HEARTH_DATADIR: /data")
    only_problem(check_deploy.run_checks(deploy_copy), "HEARTH_DATADIR", "not a setting")


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile_problems(deploy_copy: Path, old: str, new: str) -> list[str]:
    edit_text(deploy_copy / "Dockerfile", old, new)
    return check_deploy.check_dockerfile((deploy_copy / "Dockerfile").read_text())


def test_the_dockerfile_passes() -> None:
    assert check_deploy.check_dockerfile((ROOT / "Dockerfile").read_text()) == []


@pytest.mark.parametrize("image", ["python:3.11-slim", "python", "python:latest"])
def test_an_unpinned_base_image_fails(deploy_copy: Path, image: str) -> None:
    only_problem(
        dockerfile_problems(
            deploy_copy,
            "ARG BASE_IMAGE=python:3.11.15-slim-bookworm",
            f"ARG BASE_IMAGE={image}",
        ),
        f"FROM '{image}' is not pinned",
    )


def test_an_unpinned_base_image_through_an_arg_fails() -> None:
    text = (
        "ARG BASE=python:3.11\nFROM ${BASE} AS build\nFROM python:3.11.15-slim\n"
        'USER app\nCMD ["hearth", "serve"]\n'
    )
    only_problem(check_deploy.check_dockerfile(text), "'python:3.11'")


def test_a_build_stage_can_be_the_base_of_another() -> None:
    text = (
        'FROM python:3.11.15-slim AS base\nFROM base AS build\nFROM base\nUSER app\nCMD ["hearth", "serve"]\n'
    )
    assert check_deploy.check_dockerfile(text) == []


def test_a_single_stage_dockerfile_fails() -> None:
    text = 'FROM python:3.11.15-slim\nRUN pip install .\nUSER hearth\nCMD ["hearth", "serve"]\n'
    only_problem(check_deploy.check_dockerfile(text), "multi-stage")


def test_every_module_and_package_is_copied_into_the_image() -> None:
    sources = check_deploy.project_sources((ROOT / "pyproject.toml").read_text())
    assert {"*.py", "ingest/", "evaluation/", "webui/", "models/catalog.json"} <= set(sources)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert check_deploy.check_dockerfile_sources(dockerfile, (ROOT / "pyproject.toml").read_text()) == []


def test_the_image_copies_the_whole_build_context() -> None:
    # The layout of the sources may change (modules, packages, one root package): the build
    # stage copies the context as a whole and installs it, rather than listing files.
    instructions = check_deploy.dockerfile_instructions((ROOT / "Dockerfile").read_text())
    assert ("COPY", ". /src") in instructions


def test_a_source_left_out_of_the_image_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / "Dockerfile", "COPY . /src\n", "COPY README.md /src/\n")
    problems = check_deploy.run_checks(deploy_copy)
    sources = check_deploy.project_sources((deploy_copy / "pyproject.toml").read_text())
    assert len(problems) == len(sources), problems
    assert all("never copied" in p for p in problems), problems
    assert any("webui/" in p for p in problems) and any("models/catalog.json" in p for p in problems)


@pytest.mark.parametrize(("old", "new", "source"), [
    ("node_modules/\n", "node_modules/\nwebui/\n", "webui/"),  # a package
    ("node_modules/\n", "node_modules/\ningest/**\n", "ingest/"),  # its contents
    ("!models/catalog.json\n", "", "models/catalog.json"),  # a data file of the wheel
    ("node_modules/\n", "node_modules/\n*.py\n", "*.py"),  # the root package's modules
])
def test_a_source_the_dockerignore_leaves_out_fails(
    deploy_copy: Path, old: str, new: str, source: str
) -> None:
    edit_text(deploy_copy / ".dockerignore", old, new)
    problems = check_deploy.run_checks(deploy_copy)
    assert problems and all(".dockerignore leaves" in p for p in problems), problems
    assert any(source in p for p in problems), problems


def test_dockerignore_matching_follows_docker() -> None:
    rules = check_deploy.dockerignore_patterns("models/\n!models/catalog.json\n**/__pycache__/\n*.gguf\n")
    excluded = check_deploy.dockerignore_excludes
    assert excluded(rules, "models/x.gguf") and not excluded(rules, "models/catalog.json")
    assert excluded(rules, "ingest/__pycache__/a.pyc") and excluded(rules, "__pycache__")
    assert excluded(rules, "a.gguf") and not excluded(rules, "sub/a.gguf")  # `*` stops at `/`
    assert not excluded(rules, "ingest/files.py")


def test_a_new_package_must_reach_the_image_too(deploy_copy: Path) -> None:
    edit_text(deploy_copy / "pyproject.toml", '"hearth.webui"]', '"hearth.webui", "hearth.plugins"]')
    assert check_deploy.run_checks(deploy_copy) == []  # the whole context is copied
    edit_text(deploy_copy / ".dockerignore", "node_modules/\n", "node_modules/\nplugins/\n")
    only_problem(check_deploy.run_checks(deploy_copy), "plugins/", ".dockerignore leaves")


def test_running_as_root_fails(deploy_copy: Path) -> None:
    only_problem(dockerfile_problems(deploy_copy, "USER hearth", "USER root"), "root")


def test_no_user_fails(deploy_copy: Path) -> None:
    only_problem(dockerfile_problems(deploy_copy, "USER hearth\n", ""), "root")


def test_a_compiler_in_the_final_image_fails(deploy_copy: Path) -> None:
    only_problem(
        dockerfile_problems(
            deploy_copy,
            "COPY --from=build /opt/venv /opt/venv",
            "RUN apt-get update \\\n    && apt-get install -y --no-install-recommends gcc curl\n"
            "COPY --from=build /opt/venv /opt/venv",
        ),
        "compiler 'gcc'",
    )


def test_another_command_fails(deploy_copy: Path) -> None:
    only_problem(
        dockerfile_problems(deploy_copy, 'CMD ["hearth", "serve"]', 'CMD ["python", "-m", "flask", "run"]'),
        "not `hearth serve`",
    )


@pytest.mark.parametrize(
    "install",
    ['"/src[ingest,llamacpp]"', '"/src[ingest]" llama-cpp-python==0.3.36', '"/src[llamacpp]"'],
)
def test_building_llama_cpp_fails(deploy_copy: Path, install: str) -> None:
    only_problem(
        dockerfile_problems(
            deploy_copy,
            "pip install --no-deps /src",
            f"pip install {install}",
        ),
        "llama-cpp-python",
    )


def test_the_dockerignore_keeps_data_models_caches_and_secrets_out() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (
        ".env",
        ".venv/",
        "data/",
        "models/",
        ".git",
        "**/__pycache__/",
        ".pytest_cache/",
        "*.gguf",
        "!models/catalog.json",  # weights stay out, the catalogue the image installs comes in
    ):
        assert needed in patterns, needed


# --- the health checks and the model pull, run for real ------------------------------------


def test_the_chroma_healthcheck_passes_on_a_real_chroma_server(chroma_server: str) -> None:
    """The exact command of docker-compose.yml, with bash, against `chroma run`."""
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    test = doc["services"]["chroma"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "bash"
    host_port = chroma_server.rstrip("/").rsplit("//", 1)[1]
    host, port = host_port.split(":")
    command = [part.replace("127.0.0.1/8000", f"{host}/{port}") for part in test[1:]]
    assert command != test[1:], "the test no longer finds the port in the health check"
    assert subprocess.run(command, capture_output=True, timeout=15).returncode == 0
    # A closed port is unhealthy.
    closed = [part.replace(f"{host}/{port}", f"{host}/1") for part in command]
    assert subprocess.run(closed, capture_output=True, timeout=15).returncode != 0


class _Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = json.dumps({"ready": self.status == 200, "checks": {}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[tuple[str, type[_Readyz]]]:
    handler = type("Handler", (_Readyz,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/readyz", handler
    server.shutdown()
    server.server_close()


def test_the_api_healthcheck_follows_readyz(readyz_server: tuple[str, type[_Readyz]]) -> None:
    url, handler = readyz_server
    script = [sys.executable, str(ROOT / "docker/healthcheck.py")]
    assert subprocess.run([*script, url], capture_output=True, timeout=15).returncode == 0
    handler.status = 503
    not_ready = subprocess.run([*script, url], capture_output=True, text=True, timeout=15)
    assert not_ready.returncode == 1 and "HTTP 503" in not_ready.stdout
    down = subprocess.run([*script, "http://127.0.0.1:1/readyz"], capture_output=True, timeout=15)
    assert down.returncode == 1
    # The compose file and the image both call this script.
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert doc["services"]["api"]["healthcheck"]["test"][-1] == "/app/docker/healthcheck.py"
    assert "docker/healthcheck.py" in (ROOT / "Dockerfile").read_text()


@pytest.fixture
def fake_ollama_cli(tmp_path: Path) -> Callable[..., tuple[int, list[str]]]:
    """Runs docker/pull-models.sh with an `ollama` stand-in that logs its calls.

    The real ollama binary cannot be installed here; the stand-in knows the models listed in
    HAVE (as `ollama show` would) and records every invocation.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stub = bin_dir / "ollama"
    stub.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'if [ "$1" = show ]; then case " $HAVE " in *" $2 "*) exit 0;; esac; exit 1; fi\n'
        'if [ "$1" = pull ] && [ "$2" = broken ]; then exit 1; fi\n'
        "exit 0\n"
    )
    stub.chmod(0o755)

    def run(**env: str) -> tuple[int, list[str]]:
        log.write_text("")
        full_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HAVE": "", **env}
        result = subprocess.run(
            ["sh", str(ROOT / "docker/pull-models.sh")],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.returncode, log.read_text().splitlines()

    return run


def test_the_model_pull_fetches_the_configured_model(fake_ollama_cli: Any) -> None:
    assert fake_ollama_cli() == (0, ["show llama3.1:8b", "pull llama3.1:8b"])
    assert fake_ollama_cli(HEARTH_OLLAMA_MODEL="llama3.2:3b") == (
        0,
        ["show llama3.2:3b", "pull llama3.2:3b"],
    )


def test_the_model_pull_skips_a_model_already_in_the_volume(fake_ollama_cli: Any) -> None:
    assert fake_ollama_cli(HAVE="llama3.1:8b") == (0, ["show llama3.1:8b"])


def test_the_model_pull_fetches_the_embedder_only_for_ollama_embeddings(
    fake_ollama_cli: Any,
) -> None:
    code, calls = fake_ollama_cli(HAVE="llama3.1:8b", HEARTH_EMBEDDING_BACKEND="ollama")
    assert (code, calls) == (
        0,
        ["show llama3.1:8b", "show nomic-embed-text", "pull nomic-embed-text"],
    )
    code, calls = fake_ollama_cli(HAVE="llama3.1:8b", HEARTH_EMBEDDING_BACKEND="sentence-transformers")
    assert (code, calls) == (0, ["show llama3.1:8b"])


def test_a_failed_pull_fails_the_one_shot_service(fake_ollama_cli: Any) -> None:
    code, calls = fake_ollama_cli(HEARTH_OLLAMA_MODEL="broken")
    assert code != 0 and calls == ["show broken", "pull broken"]


# --- Kubernetes (deploy/kubernetes/) -------------------------------------------------------

K8S = Path("deploy/kubernetes")


def k8s_problems(root: Path) -> list[str]:
    compose = check_deploy.load_yaml(root / "docker-compose.yml")
    return check_deploy.check_kubernetes(root, compose)


def edit_k8s(root: Path, name: str, kind: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the object of ``kind`` in the manifest file ``name``."""
    path = root / K8S / name
    docs = list(yaml.safe_load_all(path.read_text()))
    change(next(d for d in docs if d["kind"] == kind))
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def api_container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_the_manifests_are_what_the_issue_asks_for() -> None:
    _, docs = check_deploy.kubernetes_objects(ROOT / K8S)
    objects = {(o["kind"], o["metadata"]["name"]): o for objs in docs.values() for o in objs}
    container = api_container(objects[("Deployment", "hearth")])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert [s.get("configMapRef", s.get("secretRef"))["name"] for s in container["envFrom"]] \
        == ["hearth-config", "hearth-secrets"]
    assert ("HorizontalPodAutoscaler", "hearth") in objects and ("Service", "hearth") in objects
    external = {name: o["spec"]["externalName"] for (kind, name), o in objects.items()
                if kind == "Service" and o["spec"].get("type") == "ExternalName"}
    assert set(external) == {"hearth-llm", "hearth-chroma", "hearth-mongo"}
    config = objects[("ConfigMap", "hearth-config")]["data"]
    assert config["HEARTH_OLLAMA_BASE_URL"].startswith("http://hearth-llm:")
    assert config["HEARTH_CHROMA_URL"].startswith("http://hearth-chroma:")
    assert "hearth-mongo" in objects[("Secret", "hearth-secrets")]["stringData"]["HEARTH_MONGODB_URI"]
    # The client-facing Service does not carry the metrics port.
    assert [p["name"] for p in objects[("Service", "hearth")]["spec"]["ports"]] == ["http"]
    assert {p.parent.name for p in (ROOT / K8S).glob("components/*/kustomization.yaml")} \
        == {"vllm", "mongodb-replica-set"}


def test_a_misspelt_field_fails_kubernetes_schema(deploy_copy: Path) -> None:
    def typo(deployment: dict[str, Any]) -> None:
        api_container(deployment)["readinesProbe"] = api_container(deployment).pop("readinessProbe")

    edit_k8s(deploy_copy, "deployment.yaml", "Deployment", typo)
    problems = k8s_problems(deploy_copy)
    assert any("readinesProbe" in p and "deployment.yaml" in p for p in problems), problems
    assert any("readinessProbe must GET /readyz" in p for p in problems), problems


def test_a_wrong_type_fails_kubernetes_schema(deploy_copy: Path) -> None:
    edit_k8s(deploy_copy, "hpa.yaml", "HorizontalPodAutoscaler",
             lambda hpa: hpa["spec"].update(minReplicas="two"))
    only_problem(k8s_problems(deploy_copy), "hpa.yaml", "minReplicas", "'two'")


def test_liveness_on_readyz_fails(deploy_copy: Path) -> None:
    edit_k8s(deploy_copy, "deployment.yaml", "Deployment",
             lambda d: api_container(d)["livenessProbe"]["httpGet"].update(path="/readyz"))
    only_problem(k8s_problems(deploy_copy), "livenessProbe must GET /healthz")


def test_a_pod_without_a_pause_before_sigterm_fails(deploy_copy: Path) -> None:
    edit_k8s(deploy_copy, "deployment.yaml", "Deployment",
             lambda d: api_container(d).pop("lifecycle"))
    only_problem(k8s_problems(deploy_copy), "no preStop pause")


def test_a_termination_grace_shorter_than_hearths_fails(deploy_copy: Path) -> None:
    # The pause (5 s), HEARTH_SHUTDOWN_GRACE_S (45 s by default) and the last words (5 s).
    edit_k8s(deploy_copy, "deployment.yaml", "Deployment",
             lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=55))
    only_problem(k8s_problems(deploy_copy), "terminationGracePeriodSeconds (55)", "5 + 45 + 5 s")
    edit_k8s(deploy_copy, "deployment.yaml", "Deployment",
             lambda d: api_container(d)["lifecycle"].update(preStop={"sleep": {"seconds": 2}}))
    assert k8s_problems(deploy_copy) == []  # the sleep action, 2 + 45 + 5 < 55


def test_a_service_that_selects_no_pod_fails(deploy_copy: Path) -> None:
    edit_k8s(deploy_copy, "service.yaml", "Service",
             lambda s: s["spec"]["selector"].update({"app.kubernetes.io/name": "hearht"}))
    only_problem(k8s_problems(deploy_copy), "Service hearth:", "matches no pod")


def test_a_port_that_is_not_the_settings_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / K8S / "configmap.yaml", 'HEARTH_PORT: "8000"', 'HEARTH_PORT: "8080"')
    problems = k8s_problems(deploy_copy)
    assert any("is not HEARTH_PORT" in p for p in problems), problems
    assert any("HEARTH_PORT is '8080', but '8000' in docker-compose.yml" in p for p in problems)


def test_a_misspelt_setting_in_a_configmap_or_component_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / K8S / "configmap.yaml", "HEARTH_LOG_FORMAT:", "HEARTH_LOGFORMAT:")
    only_problem(k8s_problems(deploy_copy), "HEARTH_LOGFORMAT is not a setting")
    edit_text(deploy_copy / K8S / "configmap.yaml", "HEARTH_LOGFORMAT:", "HEARTH_LOG_FORMAT:")
    edit_text(deploy_copy / K8S / "components/vllm/configmap.yaml", "HEARTH_LLM_BACKEND: openai",
              "HEARTH_LLM_BACKEND: vllm")
    only_problem(k8s_problems(deploy_copy), "components/vllm/configmap.yaml", "llm_backend")


def test_a_patch_of_an_object_the_base_lacks_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / K8S / "components/vllm/external-services.yaml", "name: hearth-llm",
              "name: hearth-vllm")
    only_problem(k8s_problems(deploy_copy), "patches Service 'hearth-vllm'")


def test_a_manifest_left_out_of_the_kustomization_fails(deploy_copy: Path) -> None:
    edit_text(deploy_copy / K8S / "kustomization.yaml", "  - pdb.yaml\n", "")
    only_problem(k8s_problems(deploy_copy), "pdb.yaml is not in kustomization.yaml")
