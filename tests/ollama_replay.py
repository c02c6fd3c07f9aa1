"""A stand-in for an Ollama server, for contract tests of Hearth's Ollama adapter.

No Ollama server can be installed on these machines, so this HTTP server on 127.0.0.1 replays
the responses Ollama's API documentation gives for ``/api/tags``, ``/api/chat`` (streaming
NDJSON and non-streaming JSON) and ``/api/embed``, including its 404 for a model that was not
pulled. It records every request, so tests can check what Hearth sent (``num_ctx`` above all).
With ``logprobs=True`` it answers a request for log-probabilities as Ollama 0.12.11 and later
do (each piece's tokens under ``logprobs``, with ``top_logprobs`` alternatives); without, as
older servers do, which ignore the request. The replay's tokens are its words, their
log-probabilities made up (``logprob_of``).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREATED_AT = "2023-08-04T19:22:45.499127Z"


class OllamaReplay:
    def __init__(self, models: tuple[str, ...] = ("llama3.1:8b",),
                 answer: str = "Hearth answers from your documents.", delay: float = 0.0,
                 logprobs: bool = False, trickle: float = 0.0) -> None:
        self.models = list(models)
        self.logprobs = logprobs
        self.answer = answer
        self.delay = delay  # seconds before each chat answer: a model that is slow
        # Seconds between the bytes of a chat answer's body: a server (or a proxy before it)
        # that sends a byte now and then, never silent for as long as a read's timeout.
        self.trickle = trickle
        self.requests: list[dict[str, Any]] = []
        self.script: list[str] = []  # answers given one per chat, in turn, before ``answer``
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self._write(data)

            def _write(self, data: bytes) -> None:
                if not replay.trickle:
                    self.wfile.write(data)
                    return
                self.wfile.flush()
                for n in range(len(data)):
                    self.wfile.write(data[n:n + 1])
                    self.wfile.flush()
                    time.sleep(replay.trickle)

            def do_GET(self) -> None:
                if self.path == "/api/tags":
                    self._send(200, {"models": [
                        {"name": m, "model": m, "modified_at": CREATED_AT, "size": 4920753328,
                         "digest": "46e0c10c039e019119339687c3c1757cc81b9da49709a3b3924863ba87ca666e",
                         "details": {"format": "gguf", "family": "llama",
                                     "parameter_size": "8.0B", "quantization_level": "Q4_K_M"}}
                        for m in replay.models]})
                elif self.path == "/api/version":
                    self._send(200, {"version": "0.5.7"})
                else:
                    self._send(404, b"404 page not found", "text/plain")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                replay.requests.append({"path": self.path, "body": body})
                model = body.get("model")
                if model not in replay.models:
                    self._send(404, {"error": f'model "{model}" not found, try pulling it first'})
                elif self.path == "/api/chat":
                    self._chat(body)
                elif self.path == "/api/embed":
                    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    self._send(200, {"model": model, "embeddings": [
                        [float(len(t) % 7), 1.0, 0.5] for t in inputs],
                        "total_duration": 14143917, "load_duration": 1019500,
                        "prompt_eval_count": 8})
                else:
                    self._send(404, b"404 page not found", "text/plain")

            def _chat(self, body: dict[str, Any]) -> None:
                time.sleep(replay.delay)
                answer = replay.script.pop(0) if replay.script else replay.answer
                stats = {"done_reason": "stop", "total_duration": 4883583458,
                         "load_duration": 1334875, "prompt_eval_count": 26,
                         "prompt_eval_duration": 342546000, "eval_count": 282,
                         "eval_duration": 4535599000}
                words = [word + " " for word in answer.split(" ")]
                if not body.get("stream", True):
                    reported = [self._logprobs(body, n, w).get("logprobs", [])
                                for n, w in enumerate(words)]
                    logprobs = {"logprobs": sum(reported, [])} if any(reported) else {}
                    self._send(200, {"model": body["model"], "created_at": CREATED_AT,
                                     "message": {"role": "assistant", "content": answer},
                                     "done": True, **logprobs, **stats})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                for n, word in enumerate(words):
                    piece = {"model": body["model"], "created_at": CREATED_AT,
                             "message": {"role": "assistant", "content": word},
                             "done": False, **self._logprobs(body, n, word)}
                    self._write(json.dumps(piece).encode() + b"\n")
                    self.wfile.flush()
                final = {"model": body["model"], "created_at": CREATED_AT,
                         "message": {"role": "assistant", "content": ""}, "done": True, **stats}
                self._write(json.dumps(final).encode() + b"\n")

            def _logprobs(self, body: dict[str, Any], n: int, token: str) -> dict[str, Any]:
                if not (replay.logprobs and body.get("logprobs")):
                    return {}
                logprob = replay.logprob_of(n)
                entry: dict[str, Any] = {"token": token, "logprob": logprob,
                                         "bytes": list(token.encode())}
                if body.get("top_logprobs"):
                    other = "perhaps "
                    entry["top_logprobs"] = [
                        {"token": token, "logprob": logprob, "bytes": list(token.encode())},
                        {"token": other, "logprob": logprob - 2.0, "bytes": list(other.encode())},
                    ][:body["top_logprobs"]]
                return {"logprobs": [entry]}

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OllamaReplay:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def logprob_of(n: int) -> float:
        """The made-up log-probability of the answer's ``n``-th word."""
        return -0.05 * (n % 4)

    def chats(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"] == "/api/chat"]
