#!/bin/sh
# One-shot model pull for docker-compose.yml's `ollama-pull` service: fetch the models that
# Hearth's compose profile uses into the Ollama volume, so `docker compose up` alone yields a
# working system. A model already in the volume is not pulled again: `ollama pull` would ask
# the registry, and a restart without internet must still work.
set -eu

pull_once() {
    if ollama show "$1" >/dev/null 2>&1; then
        echo "ollama-pull: $1 is already in the volume"
    else
        echo "ollama-pull: pulling $1 (first start only; Llama 3.1 8B is about 5 GB)"
        ollama pull "$1"
    fi
}

pull_once "${HEARTH_OLLAMA_MODEL:-llama3.1:8b}"
if [ "${HEARTH_EMBEDDING_BACKEND:-sentence-transformers}" = "ollama" ]; then
    pull_once "${HEARTH_OLLAMA_EMBEDDING_MODEL:-nomic-embed-text}"
fi
