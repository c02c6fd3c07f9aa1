"""Static checks of the Docker deployment, for CI machines that have no Docker engine.

    python scripts/check_deploy.py [--root DIR]

What a `docker compose up` would reject, or silently get wrong, that can be found by reading
the files: the compose files against the Compose Specification's JSON schema (vendored in
deploy/), `depends_on` targets that do not exist, services without health checks, ports
published beyond 127.0.0.1, images that float (`latest`, no tag), settings of config.py that
`.env.example` does not document (or documents with a wrong default), and a Dockerfile that is
single-stage, runs as root, keeps compilers or does not run `hearth serve`, a build context
(.dockerignore) that leaves out a package the image installs; and deploy/kubernetes/ against
Kubernetes' own schemas (kubernetes-validate's bundled copies, offline), its names wired
together, its probes and its settings the same as the compose file's.
Each check returns a list of problems; an empty list means it passed.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.gpu.yml")
SCHEMA_PATH = Path("deploy/compose.schema.json")
ENV_EXAMPLE = Path(".env.example")
DOCKERFILE = Path("Dockerfile")
DOCKERIGNORE = Path(".dockerignore")
PYPROJECT = Path("pyproject.toml")
KUBERNETES = Path("deploy/kubernetes")
SETTINGS_PREFIX = "HEARTH_"

LOOPBACK = {"127.0.0.1", "::1", "[::1]"}
# An exact version at the start of the tag (3.11.15-slim-bookworm, 0.17.7, 8.0.20), or a digest.
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
COMPILERS = {
    "gcc",
    "g++",
    "cc",
    "c++",
    "clang",
    "build-essential",
    "make",
    "cmake",
    "gfortran",
    "cpp",
    "rustc",
    "cargo",
    "build-base",
}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, $NAME; `$$` is a literal dollar.
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
ENV_ENTRY = re.compile(r"^(?:#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


# --- compose -------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return doc


def interpolate(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Resolve compose's ${VAR:-default} syntax the way an empty environment would."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op") or "", match.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-") and (current is None or (op == ":-" and current == "")):
            return arg
        return current or ""

    return INTERPOLATION.sub(resolve, value)


def interpolated_variables(docs: Iterable[Any]) -> dict[str, str | None]:
    """Every variable the compose files read, with its inline default (None when it has none)."""
    found: dict[str, str | None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            for match in INTERPOLATION.finditer(value):
                name = match.group("braced") or match.group("bare")
                if name:
                    default = match.group("arg") if match.group("op") in (":-", "-") else None
                    found.setdefault(name, default)

    for doc in docs:
        walk(doc)
    return found


def check_schema(doc: Mapping[str, Any], schema: Mapping[str, Any], label: str) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        # "not valid under any of the given schemas" says little: name the closest miss.
        while err.context:
            err = max(err.context, key=lambda e: len(e.absolute_path))
        path = "/".join(str(p) for p in err.absolute_path) or "(top)"
        problems.append(f"{label}: {path}: {err.message}")
    return problems


def merge(base: Any, override: Any) -> Any:
    """Overlay an override file on a base file (mappings merge, other values replace)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def merge_all(base: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> Any:
    merged: Any = dict(base)
    for override in overrides.values():
        merged = merge(merged, override)
    return merged


def _depends_on(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return {name: (spec or {}) for name, spec in deps.items()}


def _has_healthcheck(service: Mapping[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    return bool(check) and not check.get("disable", False) and check.get("test") != ["NONE"]


def check_references(
    base: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """depends_on targets exist and fit their condition; override files extend real services."""
    problems = []
    services = base.get("services") or {}
    for label, override in overrides.items():
        for name in override.get("services") or {}:
            if name not in services:
                problems.append(f"{label}: overrides service {name!r}, which the base file lacks")
    merged_services = merge_all(base, overrides).get("services") or {}
    for name, service in merged_services.items():
        for target, spec in _depends_on(service).items():
            if target not in merged_services:
                problems.append(f"service {name!r} depends on {target!r}, which is not a service")
                continue
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy" and not _has_healthcheck(merged_services[target]):
                problems.append(
                    f"service {name!r} waits for {target!r} to be healthy, "
                    f"but {target!r} has no healthcheck"
                )
    return problems


def check_healthchecks(doc: Mapping[str, Any]) -> list[str]:
    """Each long-running service has a health check; one-shot services are waited on to finish."""
    services = doc.get("services") or {}
    one_shots = {
        target
        for service in services.values()
        for target, spec in _depends_on(service).items()
        if spec.get("condition") == "service_completed_successfully"
    }
    problems = []
    for name, service in services.items():
        if name in one_shots:
            if service.get("restart", "no") != "no":
                problems.append(f'one-shot service {name!r} must not restart (restart: "no")')
        elif not _has_healthcheck(service):
            problems.append(f"service {name!r} has no healthcheck")
    return problems


def _published_host_ip(port: Any) -> tuple[str | None, str]:
    """(host IP or None when it binds every interface, text for the message) of one entry."""
    if isinstance(port, dict):
        if "published" not in port:
            return "127.0.0.1", str(port)  # not published on the host at all
        return port.get("host_ip"), str(port)
    text = str(port)
    if text.startswith("["):  # [::1]:8000:8000
        host, _, _rest = text[1:].partition("]")
        return host, text
    parts = text.split(":")
    if len(parts) == 3:
        return parts[0], text
    return None, text


def check_ports(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, service in (doc.get("services") or {}).items():
        if service.get("network_mode") == "host":
            problems.append(f"service {name!r} uses the host network: nothing binds to 127.0.0.1")
        for port in interpolate(service.get("ports") or []):
            host_ip, text = _published_host_ip(port)
            if host_ip not in LOOPBACK:
                problems.append(
                    f"service {name!r} publishes {text!r} beyond loopback: "
                    'bind it to 127.0.0.1 ("127.0.0.1:HOST:CONTAINER")'
                )
    return problems


def image_is_pinned(reference: str) -> bool:
    if DIGEST.search(reference):
        return True
    name = reference.rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    return bool(tag) and tag != "latest" and bool(EXACT_TAG.match(tag))


def check_compose_images(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, service in (doc.get("services") or {}).items():
        if "build" in service:
            continue  # the image is built here, its name is a local label
        image = interpolate(service.get("image", ""))
        if not image_is_pinned(image):
            problems.append(
                f"service {name!r} uses image {image!r}: pin an exact version tag or a digest"
            )
    return problems


# --- settings and .env.example -------------------------------------------------------------


def parse_env_example(text: str) -> tuple[dict[str, str], list[str]]:
    """The documented variables (commented out or not) with their values, and format problems."""
    entries: dict[str, str] = {}
    problems = []
    previous = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        match = ENV_ENTRY.match(line)
        if match:
            name, value = match.group("name"), match.group("value")
            if name in entries:
                problems.append(f".env.example:{number}: {name} is documented twice")
            # dotenv's own parser, so that quoting means what it will mean in a real .env.
            entries[name] = dotenv_values(stream=io.StringIO(f"{name}={value}\n")).get(name) or ""
            if not previous.startswith("#") or ENV_ENTRY.match(previous):
                problems.append(f".env.example:{number}: {name} has no comment line above it")
        previous = line
    return entries, problems


def settings_class() -> Any:
    """config.Settings of this repository (the script runs from anywhere)."""
    return hearth_module("config").Settings


def hearth_module(name: str) -> Any:
    """A module of this repository's ``hearth`` (the script runs from anywhere)."""
    import importlib

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"hearth.{name}")


def settings_fields() -> dict[str, Any]:
    return dict(settings_class().model_fields)


def _same_value(field: str, a: Any, b: Any) -> bool:
    settings = settings_class()
    return bool(
        settings(**{field: a}).model_dump()[field] == settings(**{field: b}).model_dump()[field]
    )


def check_env_example(
    text: str, compose_variables: Mapping[str, str | None] | None = None
) -> list[str]:
    from pydantic import ValidationError
    from pydantic_core import PydanticUndefined

    Settings = settings_class()  # noqa: N806 - the class, by its own name
    entries, problems = parse_env_example(text)
    fields = settings_fields()
    expected = {SETTINGS_PREFIX + name.upper(): name for name in fields}
    for variable in sorted(set(expected) - set(entries)):
        problems.append(f".env.example does not document {variable} (a setting in config.py)")
    for variable in sorted(v for v in entries if v.startswith(SETTINGS_PREFIX)):
        if variable not in expected:
            problems.append(f".env.example documents {variable}, which config.py does not read")

    # The documented values must be the real defaults: read them as Settings would.
    documented = {expected[v]: entries[v] for v in expected if v in entries}
    defaults = {
        name: field.default
        for name, field in fields.items()
        if name in documented and field.default is not PydanticUndefined
    }
    try:
        as_documented = Settings(**documented).model_dump()
        actual = Settings(**defaults).model_dump()
    except ValidationError as exc:
        problems.append(f".env.example holds a value config.py rejects: {exc}")
    else:
        for name in sorted(documented):
            if as_documented[name] != actual[name]:
                problems.append(
                    f".env.example gives {SETTINGS_PREFIX}{name.upper()}={documented[name]!r}, "
                    f"but its default in config.py is {actual[name]!r}"
                )

    for variable, default in sorted((compose_variables or {}).items()):
        if variable not in entries:
            problems.append(f"the compose files read ${{{variable}}}, which .env.example lacks")
        elif variable in expected and default is not None:
            field = expected[variable]
            try:
                same = field not in documented or _same_value(field, default, documented[field])
            except ValidationError:
                same = False
            if not same:
                problems.append(
                    f"the compose files default ${{{variable}}} to {default!r}, "
                    f".env.example to {documented[field]!r}"
                )
    return problems


def check_setting_names(texts: Mapping[str, str]) -> list[str]:
    """Every HEARTH_* name the deployment files set is a setting (a typo would be ignored)."""
    known = {SETTINGS_PREFIX + name.upper() for name in settings_fields()}
    problems = []
    for label, text in texts.items():
        for name in sorted(set(re.findall(r"\bHEARTH_[A-Z0-9_]+\b", text)) - known):
            problems.append(f"{label} names {name}, which is not a setting in config.py")
    return problems


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line:
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    if pending:
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _installed_packages(run: str) -> set[str]:
    """Packages that apt-get/apk/yum install in a RUN line."""
    packages: set[str] = set()
    for command in re.split(r"&&|;|\|\|", run):
        words = shlex.split(command, posix=True) if command.strip() else []
        if "install" in words and any(w in words for w in ("apt-get", "apt", "apk", "yum", "dnf")):
            after = words[words.index("install") + 1 :]
            packages |= {w.split("=")[0] for w in after if not w.startswith("-")}
        elif "add" in words and "apk" in words:
            packages |= {w for w in words[words.index("add") + 1 :] if not w.startswith("-")}
    return packages


def check_dockerfile(text: str) -> list[str]:
    problems = []
    instructions = dockerfile_instructions(text)
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    stage_names: set[str] = set()
    unpinned: set[str] = set()
    for keyword, rest in instructions:
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = interpolate(words[0], args) if words else ""
            local = image.lower() in stage_names or image == "scratch"
            if not local and not image_is_pinned(image) and image not in unpinned:
                unpinned.add(image)  # once, though every stage may use it (ARG BASE_IMAGE)
                problems.append(
                    f"Dockerfile: FROM {image!r} is not pinned: use an exact version tag "
                    "(python:3.11.15-slim-bookworm) or a digest"
                )
            if len(words) >= 3 and words[1].upper() == "AS":
                stage_names.add(words[2].lower())
            stages.append([])
        elif stages:
            stages[-1].append((keyword, rest))
    if len(stages) < 2:
        problems.append("Dockerfile: not multi-stage (build in one stage, copy into a clean one)")
    if not stages:
        return problems

    final = stages[-1]
    for keyword, rest in final:
        if keyword == "RUN":
            for package in sorted(_installed_packages(rest) & COMPILERS):
                problems.append(f"Dockerfile: the final stage installs the compiler {package!r}")
    users = [rest.split(":")[0] for keyword, rest in final if keyword == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("Dockerfile: the final stage runs as root: add a USER that is not root")
    commands = [rest for keyword, rest in final if keyword == "CMD"]
    if not commands:
        problems.append("Dockerfile: the final stage has no CMD (it should run `hearth serve`)")
    else:
        try:
            command = json.loads(commands[-1])
        except json.JSONDecodeError:
            command = shlex.split(commands[-1])
        if command[:2] != ["hearth", "serve"]:
            problems.append(f"Dockerfile: CMD is {command!r}, not `hearth serve`")
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    # The package by name, or through the project's `llamacpp` extra (".[ingest,llamacpp]").
    if re.search(r"llama[-_]cpp[-_]python|\[[^\]]*\bllamacpp\b", runs, re.IGNORECASE):
        problems.append("Dockerfile: installs llama-cpp-python; the compose profile uses Ollama")
    return problems


def project_sources(pyproject: str) -> list[str]:
    """What pyproject.toml installs, as paths of the checkout: the root's modules (``*.py``,
    the root being the package ``hearth``), the subpackages (``ingest/``) and the package data
    (``models/catalog.json``)."""
    tool = tomllib.loads(pyproject).get("tool", {}).get("setuptools", {})
    package_dir = tool.get("package-dir", {})

    def folder(package: str) -> str:
        top, *rest = package.split(".")
        return str(Path(package_dir.get(top, top), *rest))

    sources = []
    for package in tool.get("packages", []):
        where = folder(package)
        sources.append("*.py" if where == "." else f"{where}/")
    for package, files in tool.get("package-data", {}).items():
        where = folder(package)
        sources += [str(Path(where, f)) for f in files
                    if where == "." and "*" not in f]  # data inside a subpackage comes with it
    return sources


def dockerignore_patterns(text: str) -> list[tuple[bool, str]]:
    """(is an exception ``!``, pattern) of each rule of a .dockerignore, in order."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = re.sub(r"/+", "/", pattern).strip("/")
        if pattern.startswith("./"):
            pattern = pattern[2:]
        if pattern:
            rules.append((negate, pattern))
    return rules


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match with Docker's ``**`` (any number of folders), as a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        char = pattern[i]
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(rules: list[tuple[bool, str]], path: str) -> bool:
    """Whether the build context leaves ``path`` out. A rule matches a path or a folder above
    it; the last rule that matches decides, as in Docker."""
    path = path.strip("/")
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, pattern in rules:
        regex = _dockerignore_regex(pattern)
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def check_dockerignore(dockerignore: str, pyproject: str) -> list[str]:
    """The build context holds every source the project installs (the Dockerfile copies the
    context as a whole, so an exclusion here is what would leave a package out)."""
    rules = dockerignore_patterns(dockerignore)
    required = project_sources(pyproject) + ["pyproject.toml", "README.md", "constraints.txt"]

    def left_out(source: str) -> bool:
        if source == "*.py":  # the root is the package: its modules, __init__.py first of all
            return dockerignore_excludes(rules, "__init__.py")
        return dockerignore_excludes(rules, source.rstrip("/")) or (
            source.endswith("/") and dockerignore_excludes(rules, source + "__init__.py")
        )

    return [
        f".dockerignore leaves {source} out of the build context, "
        "but the image installs it (pyproject.toml)"
        for source in required
        if left_out(source)
    ]


def check_dockerfile_sources(text: str, pyproject: str) -> list[str]:
    """Every module and package the project installs is copied in before it is installed:
    a package left out installs nothing and fails only when the container starts. Copying
    the whole context (``COPY . /src``) copies them all; .dockerignore is checked apart."""
    copied: list[str] = []
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "COPY" and "--from" not in rest:
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            copied += [w.rstrip("/") for w in words[:-1]]

    def covered(source: str) -> bool:
        name = source.rstrip("/")
        folders = {str(parent) for parent in Path(name).parents if str(parent) != "."}
        return any(c in (".", "./", name) or c in folders or (source.endswith(".py") and c == "*.py")
                   for c in copied)

    return [
        f"Dockerfile: {source} is part of the project (pyproject.toml) but never copied into the image"
        for source in project_sources(pyproject)
        if not covered(source)
    ]


# --- Kubernetes ----------------------------------------------------------------------------

# The oldest Kubernetes release the manifests promise to fit, and the newest whose schemas
# kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kubernetes_objects(folder: Path) -> tuple[dict[str, Any], dict[Path, list[dict[str, Any]]]]:
    """The kustomization and, by file, the objects it lists as resources."""
    kustomization = load_yaml(folder / "kustomization.yaml")
    files = {}
    for name in kustomization.get("resources") or []:
        if (folder / name).is_file():
            files[folder / name] = load_documents(folder / name)
    return kustomization, files


def check_kubernetes_schemas(docs: dict[Path, list[dict[str, Any]]], root: Path) -> list[str]:
    """Every object against Kubernetes' own schemas (strict: an unknown field is an error),
    offline, for each release in KUBERNETES_VERSIONS."""
    problems = []
    for path, objects in docs.items():
        for obj in objects:
            label = f"{path.relative_to(root)}: {obj.get('kind')} {obj.get('metadata', {}).get('name')}"
            problem = _kubernetes_problem(json.dumps(obj, sort_keys=True))
            if problem:
                problems.append(f"{label}: {problem}")
    return problems


@functools.lru_cache(maxsize=256)
def _kubernetes_problem(obj_json: str) -> str | None:
    """What Kubernetes' schemas say is wrong with one object (JSON), or None. Remembered:
    loading a schema takes tens of milliseconds, and the tests check the same objects often."""
    import kubernetes_validate

    obj = json.loads(obj_json)
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path) or "(top)"
            return f"{where}: {exc.message} (Kubernetes {version})"
        except (kubernetes_validate.SchemaNotFoundError,
                kubernetes_validate.InvalidSchemaError) as exc:
            return f"no schema to check it against ({exc})"
    return None


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o.get("kind") == kind}


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kubernetes_wiring(objects: list[dict[str, Any]]) -> list[str]:
    """What the schemas cannot see: the names that tie the objects together, the probes, the
    resources, and ports that agree with the settings."""
    problems = []
    deployments = _by_kind(objects, "Deployment")
    configs = _by_kind(objects, "ConfigMap")
    secrets = _by_kind(objects, "Secret")
    if len(deployments) != 1:
        return [f"kubernetes: expected one Deployment (the API), found {sorted(deployments)}"]
    name, deployment = next(iter(deployments.items()))
    pod = deployment["spec"]["template"]
    labels = pod["metadata"].get("labels") or {}
    if not _selects(deployment["spec"]["selector"].get("matchLabels") or {}, labels):
        problems.append(f"Deployment {name}: its selector does not select its own pods")
    settings: dict[str, str] = {}
    containers = pod["spec"]["containers"]
    container = containers[0]
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            if ref not in configs:
                problems.append(f"Deployment {name}: reads ConfigMap {ref!r}, which is not defined")
            else:
                settings.update(configs[ref].get("data") or {})
        if "secretRef" in source and source["secretRef"]["name"] not in secrets:
            problems.append(f"Deployment {name}: reads Secret {source['secretRef']['name']!r}, "
                            "which is not defined")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    if str(ports.get("http")) != settings.get("HEARTH_PORT"):
        problems.append(f"Deployment {name}: its port `http` ({ports.get('http')}) is not "
                        f"HEARTH_PORT ({settings.get('HEARTH_PORT')})")
    if settings.get("HEARTH_METRICS_PORT", "0") != "0" and \
            str(ports.get("metrics")) != settings["HEARTH_METRICS_PORT"]:
        problems.append(f"Deployment {name}: its port `metrics` ({ports.get('metrics')}) is not "
                        f"HEARTH_METRICS_PORT ({settings['HEARTH_METRICS_PORT']})")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (container.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or get.get("port") not in ("http", ports.get("http")):
            problems.append(f"Deployment {name}: {probe} must GET {path} on the port `http`")
    problems += check_termination(name, pod["spec"], container, settings)
    requests = (container.get("resources") or {}).get("requests") or {}
    for resource in ("cpu", "memory"):
        if resource not in requests:
            problems.append(f"Deployment {name}: no {resource} request (the autoscaler and the "
                            "scheduler need one)")
    for svc_name, service in _by_kind(objects, "Service").items():
        spec = service["spec"]
        if spec.get("type") == "ExternalName":
            continue
        if not _selects(spec.get("selector") or {}, labels):
            problems.append(f"Service {svc_name}: its selector matches no pod of {name}")
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port["port"])
            if target not in ports and target not in ports.values():
                problems.append(f"Service {svc_name}: targetPort {target!r} is no port of {name}")
    autoscalers = _by_kind(objects, "HorizontalPodAutoscaler")
    if not autoscalers:
        problems.append("kubernetes: no HorizontalPodAutoscaler")
    for hpa_name, hpa in autoscalers.items():
        target = hpa["spec"]["scaleTargetRef"]
        if (target.get("kind"), target.get("name")) != ("Deployment", name):
            problems.append(f"HorizontalPodAutoscaler {hpa_name}: scales {target.get('kind')} "
                            f"{target.get('name')!r}, not the Deployment {name!r}")
    for pdb_name, pdb in _by_kind(objects, "PodDisruptionBudget").items():
        if not _selects(pdb["spec"]["selector"].get("matchLabels") or {}, labels):
            problems.append(f"PodDisruptionBudget {pdb_name}: selects no pod of {name}")
    return problems


def pre_stop_pause(container: Mapping[str, Any]) -> float | None:
    """Seconds the container's preStop hook pauses (``sleep N`` or the ``sleep`` action)."""
    hook = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = (hook.get("exec") or {}).get("command") or []
    if len(command) == 2 and Path(command[0]).name == "sleep" and \
            re.fullmatch(r"\d+(\.\d+)?", str(command[1])):
        return float(command[1])
    return None


def check_termination(name: str, pod: Mapping[str, Any], container: Mapping[str, Any],
                      settings: Mapping[str, str]) -> list[str]:
    """A pod being deleted still gets new connections for a few seconds after SIGTERM, and
    Hearth stops listening at SIGTERM: a preStop pause must come first. Then the pause, the
    grace of the requests in flight and their last words must end before Kubernetes kills."""
    pause = pre_stop_pause(container)
    if pause is None:
        return [f"Deployment {name}: no preStop pause (`sleep N`) before SIGTERM: connections "
                "sent while the pod leaves the Service would be refused"]
    grace = float(settings.get("HEARTH_SHUTDOWN_GRACE_S")
                  or settings_fields()["shutdown_grace_s"].default)
    last_words = hearth_module("server").LAST_WORDS_S
    needed = pause + grace + last_words
    given = pod.get("terminationGracePeriodSeconds", 30)
    if given <= needed:
        return [f"Deployment {name}: terminationGracePeriodSeconds ({given}) leaves no margin "
                f"over the preStop pause, HEARTH_SHUTDOWN_GRACE_S and the last words "
                f"({pause:g} + {grace:g} + {last_words} s)"]
    return []


def check_kubernetes_settings(objects: list[dict[str, Any]], compose: Mapping[str, Any]
                              ) -> list[str]:
    """The ConfigMaps and Secrets hold settings config.py accepts, and the API's container
    gets what docker-compose.yml fixes for its api service (profile, address, port, data)."""
    from pydantic import ValidationError

    known = {SETTINGS_PREFIX + name.upper(): name for name in settings_fields()}
    problems = []
    values: dict[str, str] = {}
    for obj in objects:
        if obj.get("kind") not in ("ConfigMap", "Secret"):
            continue
        data = {**(obj.get("data") or {}), **(obj.get("stringData") or {})}
        for key, value in data.items():
            if key not in known:
                problems.append(f"{obj['kind']} {obj['metadata']['name']}: {key} is not a "
                                "setting in config.py")
            else:
                values[known[key]] = value
    try:
        settings_class()(_env_file=None, **values)
    except ValidationError as exc:
        problems.append(f"kubernetes: a setting config.py rejects: {exc}")
    api = (compose.get("services") or {}).get("api") or {}
    for variable, wanted in sorted((api.get("environment") or {}).items()):
        field = known.get(variable)
        if field is None or "$" in str(wanted):
            continue  # read from .env, its default config.py's (check_env_example)
        if field not in values:
            problems.append(f"kubernetes: the compose api service sets {variable}={wanted!r}, "
                            "the manifests do not")
        elif not _same_value(field, wanted, values[field]):
            problems.append(f"kubernetes: {variable} is {values[field]!r}, but {wanted!r} "
                            "in docker-compose.yml")
    return problems


def check_kubernetes(root: Path, compose: Mapping[str, Any]) -> list[str]:
    folder = root / KUBERNETES
    if not (folder / "kustomization.yaml").is_file():
        return [f"{KUBERNETES}/kustomization.yaml is missing"]
    kustomization, docs = kubernetes_objects(folder)
    listed = {folder / name for name in kustomization.get("resources") or []}
    problems = [f"{KUBERNETES}/kustomization.yaml lists {p.name}, which does not exist"
                for p in sorted(listed) if not p.is_file()]
    problems += [f"{KUBERNETES}/{p.name} is not in kustomization.yaml's resources"
                 for p in sorted(folder.glob("*.yaml"))
                 if p.name != "kustomization.yaml" and p not in listed]
    objects = [obj for objs in docs.values() for obj in objs]
    base = {(o.get("kind"), o.get("metadata", {}).get("name")) for o in objects}
    patches: dict[Path, list[dict[str, Any]]] = {}
    for component in sorted(folder.glob("components/*/kustomization.yaml")):
        spec = load_yaml(component)
        for patch in spec.get("patches") or []:
            path = component.parent / patch["path"]
            if not path.is_file():
                problems.append(f"{component.relative_to(root)}: patch {patch['path']} is missing")
                continue
            patches[path] = load_documents(path)
            for obj in patches[path]:
                if (obj.get("kind"), obj.get("metadata", {}).get("name")) not in base:
                    problems.append(f"{path.relative_to(root)}: patches {obj.get('kind')} "
                                    f"{obj.get('metadata', {}).get('name')!r}, which the base lacks")
    problems += check_kubernetes_schemas({**docs, **patches}, root)
    problems += check_kubernetes_wiring(objects)
    problems += check_kubernetes_settings(objects, compose)
    for path, objs in patches.items():  # each component, applied alone, must fit as well
        problems += [f"{path.relative_to(root)}: {p}" for p in
                     check_kubernetes_settings(objs, {})]
    return problems


# --- all of it -----------------------------------------------------------------------------


def run_checks(root: Path = ROOT) -> list[str]:
    schema = json.loads((root / SCHEMA_PATH).read_text(encoding="utf-8"))
    docs = {name: load_yaml(root / name) for name in COMPOSE_FILES if (root / name).exists()}
    if COMPOSE_FILES[0] not in docs:
        return [f"{COMPOSE_FILES[0]} is missing"]
    base = docs[COMPOSE_FILES[0]]
    overrides = {name: doc for name, doc in docs.items() if name != COMPOSE_FILES[0]}

    problems: list[str] = []
    for name, doc in docs.items():
        problems += check_schema(doc, schema, name)
        problems += check_ports(doc)
    problems += check_references(base, overrides)
    merged = merge_all(base, overrides)
    problems += check_compose_images(merged)
    problems += check_healthchecks(merged)
    problems += check_env_example(
        (root / ENV_EXAMPLE).read_text(encoding="utf-8"), interpolated_variables(docs.values())
    )
    dockerfile = (root / DOCKERFILE).read_text(encoding="utf-8")
    problems += check_dockerfile(dockerfile)
    pyproject = (root / PYPROJECT).read_text(encoding="utf-8")
    problems += check_dockerfile_sources(dockerfile, pyproject)
    if (root / DOCKERIGNORE).exists():
        problems += check_dockerignore((root / DOCKERIGNORE).read_text(encoding="utf-8"), pyproject)
    texts = {name: (root / name).read_text(encoding="utf-8") for name in docs}
    problems += check_setting_names(texts | {"Dockerfile": dockerfile})
    problems += check_kubernetes(root, base)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root to check")
    options = parser.parse_args(argv)
    problems = run_checks(options.root)
    for problem in problems:
        print(f"FAIL {problem}")
    if not problems:
        print(
            "deployment files pass: schema, depends_on, healthchecks, ports, pins, "
            ".env.example, Dockerfile, Kubernetes manifests"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
