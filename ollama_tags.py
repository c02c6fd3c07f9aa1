"""What an Ollama server says it has: the one check that both the model (``llm``) and the
embeddings (``embeddings``) make of it when asked whether they can be used now."""

from __future__ import annotations

import httpx


def missing_model(base_url: str, model: str, timeout_s: float) -> str | None:
    """Why ``model`` cannot be used at the Ollama server ``base_url`` now, asked within
    ``timeout_s`` (its list of models, /api/tags); None when it can."""
    where = base_url.rstrip("/")
    try:
        response = httpx.get(f"{where}/api/tags", timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return (f"Ollama is not reachable at {where} ({exc.__class__.__name__}): start it with "
                "`ollama serve`")
    try:  # a proxy's page, or another server on Ollama's port, is not Ollama
        names = {m.get("name") for m in response.json()["models"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        return (f"the server at {where} does not answer as Ollama does (/api/tags is not "
                "Ollama's list of models): is HEARTH_OLLAMA_BASE_URL Ollama's address?")
    if not names & {model, f"{model}:latest"}:
        return f"Ollama has no model {model!r}: run `ollama pull {model}`"
    return None
