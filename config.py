"""Every Hearth setting, typed, in one place.

Settings come from ``HEARTH_*`` environment variables and an optional ``.env`` file. Two
profiles set different defaults: ``embedded`` (no server of any kind: llama.cpp in process,
local Chroma, SQLite history) and ``compose`` (Ollama, MongoDB and a Chroma server, as
``docker-compose.yml`` runs them). A variable set explicitly always wins over a profile.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "HEARTH_"
# HEARTH_ variables that are not settings but that Hearth's own tools read: no warning for them.
OTHER_VARIABLES = frozenset({
    "HEARTH_LLAMA_SERVER",  # deploy/scale-out/stack.py: another llama-server build
    "HEARTH_SETS_CHECK_REEXEC",  # evaluation/sets/check.py: set on its own re-run
})
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# What Hearth's requests to an OpenAI-compatible server set themselves, from other settings
# (HEARTH_TEMPERATURE, HEARTH_MAX_NEW_TOKENS, ...): HEARTH_OPENAI_EXTRA_BODY may not change them.
OPENAI_FIELDS_SET = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "max_tokens",
    "max_completion_tokens", "seed", "logprobs", "top_logprobs", "n", "stop"})


class Profile(StrEnum):
    embedded = "embedded"
    compose = "compose"


class LLMBackend(StrEnum):
    llamacpp = "llamacpp"
    ollama = "ollama"
    openai = "openai"
    transformers = "transformers"


class Quantization(StrEnum):
    """How the transformers backend holds the weights: bitsandbytes 4-bit NF4, 8-bit, or as saved."""

    nf4 = "nf4"
    int8 = "int8"
    none = "none"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class EmbeddingBackend(StrEnum):
    sentence_transformers = "sentence-transformers"
    ollama = "ollama"


class EmbeddingRuntime(StrEnum):
    """What runs the sentence-transformers model: torch, or ONNX Runtime on an export of it."""

    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


class Unsupported(StrEnum):
    """What becomes of an answer the grounding check does not find in the passages."""

    withhold = "withhold"  # not given: say so, show the passages' best evidence and the draft
    flag = "flag"  # given, with a note naming what the documents do not say


class RetrievalMode(StrEnum):
    """How passages are found (hearth.retrieval): by meaning and words fused, or by meaning
    alone. Keyword-only and reciprocal-rank fusion were measured worse (docs/evaluation.md):
    the ablation script runs them, the settings do not offer them."""

    hybrid = "hybrid"
    dense = "dense"


class RerankerChoice(StrEnum):
    """A second model that orders the first chunks again (hearth.rerank), or none."""

    none = "none"
    e5 = "e5"


DEFAULT_PERSONA = (
    "You are Hearth, a helpful assistant that answers questions about the user's own documents."
)

# What the compose profile changes; everything else keeps the embedded default.
PROFILE_DEFAULTS: dict[Profile, dict[str, Any]] = {
    Profile.embedded: {},
    Profile.compose: {
        "host": "0.0.0.0",  # inside the container; compose publishes the port on 127.0.0.1 only
        "data_dir": "/data",
        "llm_backend": LLMBackend.ollama,
        "ollama_base_url": "http://ollama:11434",
        "mongodb_uri": "mongodb://mongo:27017/?directConnection=true",
        "chroma_url": "http://chroma:8000",
        "auth": True,
        # The published port (127.0.0.1:8000 on the host) and the service name on the network.
        "allowed_hosts": ["127.0.0.1", "localhost", "::1", "api"],
    },
}


# Settings whose value an error message does not repeat: it may hold a password.
SECRETS = frozenset({"mongodb_uri", "openai_api_key", "chroma_url", "otlp_endpoint"})
# The least of the model's window a prompt needs besides the answer's tokens.
MIN_PROMPT_TOKENS = 512


class ConfigError(Exception):
    """A setting is invalid; the message names the variable and what is wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    profile: Profile = Profile.embedded

    # Where the index, history and ingestion records live.
    data_dir: Path = Path("data")
    # Folder of model files (packaged models are assembled here by `hearth models fetch`).
    models_dir: Path = Path("models")
    # Hearth's own user guide, indexed on first run when the index is empty.
    docs_dir: Path = Path("docs")

    # HTTP server.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    threads: int = Field(16, ge=1, le=512, description="server threads; each open stream holds one")
    # Slow and idle clients (docs/security.md): each connection's deadlines, and how many may be
    # open at once. Reading a request holds no thread; these bound the sockets and memory.
    max_connections: int = Field(1000, ge=16, le=100_000, description="past it, new ones wait")
    idle_timeout_s: float = Field(30.0, gt=0, description="a connection silent between requests")
    header_timeout_s: float = Field(10.0, gt=0, description="a request's first byte to its headers' end")
    body_timeout_s: float = Field(30.0, gt=0, description="the headers' end to the body's end")
    send_timeout_s: float = Field(30.0, gt=0, description="a response the client stops reading")
    # After SIGTERM, what the requests in flight (a streamed answer) get to finish; then a stream
    # ends with an error event, within server.LAST_WORDS_S. Kubernetes' pod: 60 s in all.
    shutdown_grace_s: float = Field(45.0, ge=0, description="requests in flight after SIGTERM")
    # API keys: always required when Hearth listens beyond loopback, whatever this says.
    auth: bool = False
    # Host names (without port) that requests may name in their Host header; others are refused
    # (DNS rebinding). /healthz and /readyz answer whatever the Host.
    allowed_hosts: Annotated[list[str], NoDecode] = ["127.0.0.1", "localhost", "::1"]
    # Origins (scheme://host:port) besides Hearth's own that may send state-changing requests.
    allowed_origins: Annotated[list[str], NoDecode] = []
    # Reverse proxies whose X-Forwarded-For names the client (addresses or networks).
    trusted_proxies: Annotated[list[str], NoDecode] = []

    # Monitoring (docs/monitoring.md). Metrics are off unless turned on; with a port of their
    # own they leave the API's port, and that listener serves nothing else.
    metrics: bool = Field(False, description="count and time requests and answers; serve "
                          "them at /metrics in Prometheus' text format")
    metrics_port: int = Field(0, ge=0, le=65535, description="0: /metrics on the API's port "
                              "(admin key or loopback when keys are on); else a listener of "
                              "its own on metrics_host, metrics only, no key")
    metrics_host: str = Field("127.0.0.1", description="address of the metrics listener")
    log_format: LogFormat = Field(LogFormat.text, description="json: one JSON object a line")
    # OpenTelemetry traces: nothing is sent anywhere unless an endpoint is named here.
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP collector, e.g. "
                                      "http://otel-collector:4318; empty: no traces")
    otel_service_name: str = Field("hearth", min_length=1)

    # Limits, per user (the API key's user, else the user_id, else the client address).
    rate_limit: str = Field("300/minute", description="all API requests (flask-limiter syntax)")
    question_rate_limit: str = Field("30/minute", description="questions, streamed or not")
    client_rate_limit: str = Field("1200/minute", description="all API requests of one client "
                                   "address, whatever user they name (many users may share one)")
    auth_failure_rate_limit: str = Field("20/minute", description="requests with a bad API key "
                                         "from one client address")
    max_concurrent_generations: int = Field(1, ge=1, le=64)
    max_queued_generations: int = Field(8, ge=0, le=1024)
    max_queued_per_user: int = Field(
        3, ge=1, le=1024, description="questions one user may have waiting or being answered")
    queue_timeout_s: float = Field(60.0, gt=0, description="longest wait for a free model")

    # LLM.
    llm_backend: LLMBackend = LLMBackend.llamacpp
    llamacpp_model: str = Field(
        "auto", description="a packaged model's name, a .gguf file's path, or auto: the "
        "largest packaged model this machine's cores and memory suit (models/catalog.json)")
    llamacpp_n_ctx: int = Field(4096, ge=512)
    llamacpp_n_batch: int = Field(512, ge=8)
    llamacpp_n_threads: int = Field(0, ge=0, description="0: one per physical core this "
                                    "process may use")
    llamacpp_context_contrast: float = Field(
        0.0, ge=0.0, le=4.0, description="context-aware decoding: each token's log-probability "
        "with the passages pushed away from the same prompt's without them, by this weight; "
        "0: off (docs/evaluation.md)")
    ollama_base_url: str = "http://127.0.0.1:11434"
    ollama_model: str = "llama3.1:8b"
    ollama_num_ctx: int = Field(8192, ge=512)
    openai_base_url: str = "http://127.0.0.1:8080/v1"
    openai_model: str = "local-model"
    openai_api_key: str = "not-needed"
    openai_n_ctx: int = Field(4096, ge=512, description="context window of the served model")
    # Fields of the server's own sent with every chat completion, as a JSON object: its
    # sampling settings beyond OpenAI's (llama.cpp's server: {"repeat_penalty": 1.1}, the
    # embedded model's; vLLM: {"repetition_penalty": 1.1}). Not the fields Hearth sets itself.
    openai_extra_body: Annotated[dict[str, Any], NoDecode] = {}
    # transformers in process: a Hugging Face model folder, or a packaged model converted once
    # by `hearth models convert NAME` into models_dir/hf/NAME (docs/transformers.md).
    transformers_model: str = "qwen2.5-coder-0.5b-instruct-q4_k_m"
    transformers_quantization: Quantization = Quantization.nf4
    transformers_device: Device = Device.auto
    transformers_n_ctx: int = Field(4096, ge=512, description="context window in tokens, at most "
                                    "the model's own")
    transformers_adapter: str | None = Field(None, description="a LoRA adapter from `hearth tune`: "
                                             "its name under models_dir/adapters, or a folder")
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    max_new_tokens: int = Field(256, ge=1, le=8192)
    llm_timeout_s: float = Field(180.0, gt=0, description="longest one answer may take")

    # The conversation.
    persona: str = DEFAULT_PERSONA
    answer_words: int = Field(80, ge=5, description="word budget of an answer: the prompt asks "
                              "for it, and the answer ends at the first sentence end past it")
    refusal: str = "I am not programmed to answer that."
    unsupported_answers: Unsupported = Field(
        Unsupported.withhold, description="withhold: an answer that names things the passages "
        "do not contain is not given as an answer (the user sees why, the passages' best "
        "evidence and the draft); flag: it is given with a note (docs/evaluation.md)")
    min_answer_confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="an answer the model was less sure of (the geometric "
        "mean of its tokens' probabilities, where the backend reports them) is treated as unsupported; 0: "
        "off; unset: the packaged model's measured floor (0.7 for Qwen2.5-Coder-0.5B, off for "
        "the 1.5B, off for a GGUF file of one's own: docs/evaluation.md)")
    top_k: int = Field(4, ge=1, le=50)
    min_relevance: float = Field(
        0.25, ge=-1.0, le=1.0, description="cosine similarity below which a chunk is not relevant"
    )
    # Retrieval (docs/evaluation.md has the measurements behind these defaults).
    retrieval: RetrievalMode = Field(
        RetrievalMode.hybrid, description="hybrid: dense and keyword (BM25) fused by weight, "
        "which on the whole evaluation set found the page more often and gave a few more "
        "right answers; dense: embeddings only (a data folder on NFS: docs/scaling.md)")
    keyword_weight: float = Field(
        0.15, ge=0.0, le=2.0, description="hybrid: weight of the keyword side's BM25 (scaled "
        "to the question's best) added to the cosine similarity")
    retrieval_candidates: int = Field(
        20, ge=1, le=200, description="chunks each side finds for the fusion to rank")
    passages_by_page: bool = Field(
        False, description="the top_k passages come from top_k different pages, each page's "
        "other chunks among the first top_k joined to its best one; false: the top_k best "
        "chunks, several of one page taking several places")
    page_support: float = Field(
        0.0, ge=0.0, le=1.0, description="the top_k passages ordered by their similarity + "
        "this × the other chunks of their page among the retrieval_candidates best within 0.1 "
        "of the best similarity (the same passages, the supported page first); 0: by their "
        "similarity alone")
    reranker: RerankerChoice = Field(
        RerankerChoice.none, description="e5: the first 10 chunks ordered again by "
        "multilingual-e5-small's similarity (0.7) blended with the first score (0.3), each "
        "chunk's vector kept once read (the rerank extra): the page found more often, the "
        "answers worse on the evaluation set (docs/evaluation.md); none: as retrieval ranks "
        "them")
    query_expansion: bool = Field(
        False, description="search with the question and an answer the model drafts first "
        "without the documents (HyDE): the passages rank better, but the answers did not gain "
        "for the generation it adds before retrieval (docs/evaluation.md)")
    headings_weight: float = Field(
        2.0, ge=0.0, le=10.0, description="BM25 weight of a chunk's heading path (title › "
        "section) against its text (1)")
    context_neighbours: int = Field(
        0, ge=0, le=4, description="chunks of the same page before and after each passage "
        "added to the model's context when the window has room")
    context_neighbour_tokens: int = Field(
        600, ge=0, le=32768, description="tokens the neighbours may add to the context in "
        "all, best passage first (each one delays the answer's first token); 0: none")
    context_continuation_tokens: int = Field(
        0, ge=0, le=2048, description="tokens of the next chunk added to a passage whose "
        "last line introduces what that chunk holds (a line ending in ':', a term before its "
        "definition, 'the following table'), while the window has room; 0: none (measured: "
        "the passages gain, the answers did not on the evaluation set, docs/evaluation.md)")
    context_focus: float = Field(
        1.0, gt=0.0, le=1.0, description="share of the passages' characters the model reads: "
        "their lines and sentences nearest the question in meaning, each passage keeping its "
        "heading and its best sentence; 1: the passages whole")
    max_question_chars: int = Field(4000, ge=10)
    max_body_bytes: int = Field(64 * 1024, ge=1024)

    # Embeddings.
    embedding_backend: EmbeddingBackend = EmbeddingBackend.sentence_transformers
    # The same all-MiniLM-L6-v2 under ONNX Runtime (exported once into models_dir/embeddings/):
    # faster on a CPU, the same vectors within a stated tolerance (docs/models.md).
    embedding_runtime: EmbeddingRuntime = EmbeddingRuntime.torch
    ollama_embedding_model: str = "nomic-embed-text"
    ollama_embedding_max_tokens: int = Field(2048, ge=64, description="tokens it reads at most")

    # Vector store: embedded Chroma under data_dir unless a server URL is given.
    chroma_url: str | None = None
    chroma_collection: str = Field("hearth", min_length=3)
    chroma_timeout_s: float = Field(60.0, gt=0, description="longest one call to a Chroma server")

    # Chat history: SQLite under data_dir unless a MongoDB URI is given.
    mongodb_uri: str | None = None
    mongodb_db: str = "hearth"
    backend_timeout_s: float = Field(5.0, gt=0, description="timeout for database calls")

    # Ingestion.
    chunk_tokens: int = Field(256, ge=64, le=8192,
                              description="cut to what the embedding model reads (MiniLM: 256)")
    chunk_overlap_tokens: int = Field(32, ge=0, le=128)
    crawl_max_depth: int = Field(3, ge=0)
    crawl_max_pages: int = Field(500, ge=1)
    crawl_concurrency: int = Field(4, ge=1, le=32)
    crawl_timeout_s: float = Field(10.0, gt=0)
    # pdfminer's char_margin; its own default is 2.0 (character widths): 30 joins a table's
    # cells into its rows, 2 suits two-column text.
    pdf_char_margin: float = Field(30.0, gt=0)
    # POST /api/ingest: off unless turned on; with API keys on, admins only.
    ingest_api: bool = False
    # Hosts or networks that crawls may reach although they are private (comma-separated).
    ingest_allow_hosts: Annotated[list[str], NoDecode] = []
    # Folders under which the ingestion API may read files (comma-separated).
    ingest_roots: Annotated[list[Path], NoDecode] = []
    # What one ingestion may read and unpack (docs/security.md): past a bound, a file or page
    # is skipped with the reason; an API job past its memory or time ends, the server never.
    ingest_max_file_bytes: int = Field(
        100 * 2**20, ge=1024, description="a larger file is skipped, never opened")
    ingest_max_unpacked_bytes: int = Field(
        50 * 2**20, ge=1024,
        description="what a .docx or a sitemap may unpack to; past it, it is skipped")
    ingest_max_pdf_pages: int = Field(2000, ge=1, description="a PDF with more pages is skipped")
    # OCR of PDF pages without a text layer (scans), with Debian's tesseract-ocr: bounded per
    # page in time, and per document in pages, as a page takes seconds (ingest/ocr.py).
    ingest_ocr_max_pages: int = Field(
        100, ge=0, description="pages of one PDF read by OCR at most; the others are skipped. "
        "0 turns OCR off")
    ingest_ocr_timeout_s: float = Field(
        60.0, gt=0, description="longest OCR of one page may take; past it the page is skipped")
    crawl_max_page_bytes: int = Field(
        5 * 2**20, ge=1024,
        description="a page or robots.txt, decoded (gzip, deflate); a larger page is skipped")
    ingest_job_memory_mb: int = Field(
        4096, ge=512, description="address space of an API job's reading process; past it "
        "the job fails (ingest_out_of_memory)")
    ingest_job_timeout_s: float = Field(
        6 * 3600.0, gt=0, description="longest an API job may read its source; past it the "
        "job fails (ingest_timeout)")

    # Uploads into collections (POST /api/collections/<name>/documents).
    uploads: bool = Field(True, description="users may upload documents into their collections")
    upload_max_file_bytes: int = Field(20 * 2**20, ge=1024, description="a larger file is refused")
    upload_max_files: int = Field(20, ge=1, le=1000, description="files in one request at most")
    upload_max_request_bytes: int = Field(
        50 * 2**20, ge=1024, description="one upload request's files together")
    upload_max_user_bytes: int = Field(
        200 * 2**20, ge=1024, description="what one user's uploads may take in all")

    # Evaluation: the judge model is chosen apart from the answering model.
    judge_backend: LLMBackend = LLMBackend.llamacpp
    judge_model: str = "qwen2.5-coder-1.5b-instruct-q4_k_m"
    judge_base_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        profile = values.get("profile", Profile.embedded)
        try:
            profile = Profile(profile)
        except ValueError:
            return values  # the field validator reports it, naming the variable
        return {**PROFILE_DEFAULTS[profile], **values}

    @field_validator("ingest_allow_hosts", "ingest_roots", "allowed_hosts", "allowed_origins",
                     "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # A folder as written in .env or a shell that did not expand it: "~/hearth-data" made a
    # folder named "~" in the current one, and a blank value wrote the stores into it.
    @field_validator("data_dir", "models_dir", "docs_dir", mode="before")
    @classmethod
    def _folder(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            if not str(value).strip():
                raise ValueError("blank: give a folder, or leave the variable out for the default")
            return _expand(Path(value))
        return value

    # A folder that is a file (or lies under one) read as "not created yet" and "nothing
    # ingested yet" in the status commands, and failed elsewhere naming another error.
    @field_validator("data_dir", "models_dir", "docs_dir")
    @classmethod
    def _not_a_file(cls, value: Path) -> Path:
        for path in (value, *value.parents):
            try:
                if path.exists():
                    if not path.is_dir():
                        raise ValueError(f"{path} is a file, not a folder")
                    break
            except OSError:  # not ours to look into: opening the store says why
                break
        return value

    @field_validator("ingest_roots")
    @classmethod
    def _folders(cls, value: list[Path]) -> list[Path]:
        return [_expand(path) for path in value]

    @field_validator("openai_extra_body", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc.msg}): give an object, "
                                 'such as {"repeat_penalty": 1.1}') from None
        if not isinstance(value, dict):
            raise ValueError('give a JSON object, such as {"repeat_penalty": 1.1}')
        if taken := sorted(set(value) & OPENAI_FIELDS_SET):
            raise ValueError(f"Hearth sets {', '.join(taken)} itself: leave it out")
        return value

    @field_validator("chroma_url", "mongodb_uri", "judge_base_url", "otlp_endpoint",
                     "transformers_adapter", "min_answer_confidence", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    # Each of these was taken and broke only at run time (a 500 on every question, a limit
    # quietly off, every answer a refusal): they are read now, at start.
    @field_validator("rate_limit", "question_rate_limit", "client_rate_limit",
                     "auth_failure_rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError("not a rate limit: give one such as 30/minute or "
                             "10 per second; 5 per minute (flask-limiter's syntax)") from None
        return value

    @field_validator("mongodb_uri")
    @classmethod
    def _mongodb_uri(cls, value: str | None) -> str | None:
        if value is None or value.startswith("mongodb+srv://"):
            return value  # a +srv address is looked up when connecting, not here
        if not value.startswith("mongodb://"):
            raise ValueError("give a MongoDB connection string: mongodb://HOST:PORT/ or "
                             "mongodb+srv://HOST/")
        from pymongo.uri_parser import parse_uri

        try:
            parse_uri(value)
        except Exception as exc:  # InvalidURI, ConfigurationError, ValueError (a bad port)
            raise ValueError(f"not a valid MongoDB connection string: {exc}") from None
        return value

    @field_validator("mongodb_db")
    @classmethod
    def _mongodb_db(cls, value: str) -> str:
        if not value or len(value) > 63 or any(c in value for c in '/\\. "$\x00'):
            raise ValueError("a MongoDB database name: 1 to 63 characters, none of "
                             "/ \\ . \" $ or a space")
        return value

    @field_validator("refusal")
    @classmethod
    def _refusal(cls, value: str) -> str:
        if not any(c.isalnum() for c in value):
            raise ValueError("the refusal must say something: every answer would start with "
                             "an empty one and be taken for a refusal")
        return value

    @model_validator(mode="after")
    def _room_for_a_prompt(self) -> Settings:
        window = {LLMBackend.llamacpp: ("LLAMACPP_N_CTX", self.llamacpp_n_ctx),
                  LLMBackend.ollama: ("OLLAMA_NUM_CTX", self.ollama_num_ctx),
                  LLMBackend.openai: ("OPENAI_N_CTX", self.openai_n_ctx),
                  LLMBackend.transformers: ("TRANSFORMERS_N_CTX", self.transformers_n_ctx),
                  }.get(self.llm_backend)
        if window is not None and window[1] - self.max_new_tokens < MIN_PROMPT_TOKENS:
            raise ValueError(
                f"{ENV_PREFIX}MAX_NEW_TOKENS ({self.max_new_tokens}) leaves the model's "
                f"{window[1]}-token window ({ENV_PREFIX}{window[0]}) less than "
                f"{MIN_PROMPT_TOKENS} tokens for the question, its passages and the "
                f"conversation: at most {window[1] - MIN_PROMPT_TOKENS}, or a larger window")
        return self

    # Derived paths.
    @property
    def chroma_path(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def history_path(self) -> Path:
        return self.data_dir / "history.sqlite3"

    @property
    def record_manager_url(self) -> str:
        return f"sqlite:///{(self.data_dir / 'ingest-records.sqlite3').resolve()}"

    @property
    def auth_required(self) -> bool:
        return self.auth or self.host not in LOOPBACK_HOSTS

    @property
    def n_threads(self) -> int:
        return self.llamacpp_n_threads or physical_cores()


def _expand(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # no home folder to expand "~" to (HOME unset), or no such user
        raise ValueError(f"{path} names a home folder that cannot be found") from None


def physical_cores() -> int:
    """The cores this process may use, one per physical core: a core's second hyper-thread
    adds little to llama.cpp and takes from the core's first."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    cores: set[tuple[str, str]] = set()
    try:
        physical = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                physical = value.strip()
            elif key.strip() == "core id":
                cores.add((physical, value.strip()))
    except OSError:
        pass
    count = len(cores) or os.cpu_count() or 1
    count = min(count, usable) if usable else count
    try:  # a container's CPU quota: "200000 100000" is two CPUs' time
        quota, _, period = Path("/sys/fs/cgroup/cpu.max").read_text().partition(" ")
        if quota.isdigit() and int(period) > 0:
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return count


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning pydantic's errors into one message per bad variable."""
    try:
        return Settings(**overrides)
    except UnicodeDecodeError as exc:  # only the .env file is read as text
        raise ConfigError(_not_utf8(Path(overrides.get("_env_file") or ".env"), exc)) from None
    except OSError as exc:  # a .env this user may not read
        raise ConfigError(f"cannot read {exc.filename or '.env'}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # settings read together: the message names them
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            field = str(err["loc"][0])
            got = "hidden" if field in SECRETS else repr(err.get("input"))
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{ENV_PREFIX}{field.upper()}: {message} (got {got})")
        if len(problems) == 1:  # one line, as every other failure of a command
            raise ConfigError(f"invalid setting {problems[0]}") from None
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Which line of ``path`` is not UTF-8 (the decoder's position counts from the block it
    was reading, not from the start of the file)."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as whole:
        exc = whole
    except OSError:
        pass
    line = exc.object[:exc.start].count(b"\n") + 1
    return (f"cannot read {path.absolute()}: line {line} is not UTF-8 text (byte "
            f"{exc.object[exc.start]:#x}): save the file as UTF-8")


def unknown_variables(env_file: Path | None = Path(".env")) -> list[str]:
    """A line for each ``HEARTH_`` variable of the environment or the ``.env`` file that no
    setting reads, with the setting meant where one is close: a misspelt name (HEARTH_TOPK)
    would otherwise be ignored without a word."""
    names = {name: "the environment" for name in os.environ}
    if env_file is not None:
        from dotenv import dotenv_values

        with contextlib.suppress(OSError, UnicodeDecodeError):  # load_settings names the file
            names |= {name: str(env_file) for name in dotenv_values(env_file, encoding="utf-8")
                      if name not in names}
    known = [name.upper() for name in Settings.model_fields]
    found = []
    for name, where in sorted(names.items()):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_VARIABLES:
            continue
        rest = upper.removeprefix(ENV_PREFIX)
        if rest.lower() in Settings.model_fields:
            continue
        # Its nearest setting, or the one its name starts with (HEARTH_AUTH_REQUIRED: HEARTH_AUTH).
        close = difflib.get_close_matches(rest, known, n=1) or sorted(
            (k for k in known if rest.startswith(k + "_")), key=len, reverse=True)[:1]
        meant = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        found.append(f"{name} in {where} is not a setting: ignored{meant}")
    return found
