"""The `hearth` command's own commands: --version, doctor (the real embedding model and real
stores; the model is a server that is down, which doctor must report)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hearth import __version__
from hearth.cli import main
from tests.conftest import closed_port_url


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"hearth, version {__version__}"


def test_an_empty_question_is_a_usage_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "data"))
    for question in ("", "   "):
        result = CliRunner().invoke(main, ["ask", question])
        assert result.exit_code == 2 and "the question is empty" in result.output
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_a_conversation_without_its_user_and_a_verify_with_nothing_fetched_say_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hearth ask --conversation ID` without --user answered in the API's words ("user: a
    conversation_id needs..."), after loading everything; `hearth models verify` with no
    model fetched printed nothing and succeeded."""
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HEARTH_MODELS_DIR", str(tmp_path / "models"))
    result = CliRunner().invoke(main, ["ask", "And then?", "--conversation", "a" * 32])
    assert result.exit_code == 2 and "give --user too" in result.output
    assert not (tmp_path / "data").exists()
    verified = CliRunner().invoke(main, ["models", "verify"])
    assert verified.exit_code == 1 and "No packaged model is fetched" in verified.output


def test_serve_refuses_a_port_out_of_range(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "data"))
    for port in ("0", "65536", "99999"):
        result = CliRunner().invoke(main, ["serve", "--port", port])
        assert result.exit_code == 2
        assert f"{port} is not in the range 1<=x<=65535" in result.output
    assert not (tmp_path / "data").exists()


def test_a_misspelt_variable_is_a_warning_of_every_command_and_of_serve_in_its_format(
        tmp_path: Path) -> None:
    """HEARTH_AUTH_REQUIRED=true (meant: HEARTH_AUTH) was ignored without a word; `hearth
    serve` warns in its own log format (HEARTH_LOG_FORMAT=json: a JSON object)."""
    import json
    import os
    import socket
    import subprocess

    from tests.conftest import BIN

    env = {**os.environ, "HEARTH_DATA_DIR": str(tmp_path / "data"),
           "HEARTH_AUTH_REQUIRED": "true", "HEARTH_LOG_FORMAT": "json"}
    warning = ("HEARTH_AUTH_REQUIRED in the environment is not a setting: ignored (did you mean "
               "HEARTH_AUTH?)")
    listed = subprocess.run([str(BIN / "hearth"), "keys", "list"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and listed.stderr.endswith(f"WARNING hearth [-]: {warning}\n")
    with socket.socket() as taken:  # serve stops at once, after its warnings
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        served = subprocess.run([str(BIN / "hearth"), "serve", "--port",
                                 str(taken.getsockname()[1])], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
    assert served.returncode == 1
    logged = [json.loads(line) for line in served.stderr.splitlines() if line.startswith("{")]
    assert {"level": "WARNING", "message": warning}.items() <= logged[0].items(), served.stderr
    assert warning not in served.stderr.replace(served.stderr.splitlines()[0], "", 1)  # once


@pytest.mark.real
def test_doctor_names_what_runs_and_what_is_not_ready(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HEARTH_LLM_BACKEND", "openai")
    monkeypatch.setenv("HEARTH_OPENAI_BASE_URL", closed_port_url() + "/v1")
    monkeypatch.setenv("HEARTH_TOPK", "6")
    result = CliRunner().invoke(main, ["doctor"])
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Hearth {__version__}, profile embedded"), result.output
    assert "model: openai local-model" in lines
    assert "embeddings: all-MiniLM-L6-v2 (reads 256 tokens)" in lines
    assert "API keys: off (loopback only)" in lines
    assert ("warning: HEARTH_TOPK in the environment is not a setting: ignored (did you mean "
            "HEARTH_TOP_K?)") in lines
    ocr = next(line for line in lines if line.startswith("OCR of scanned PDFs: "))
    installed = shutil.which("tesseract") and shutil.which("pdftoppm")
    assert ocr.endswith("ready (tesseract, pdftoppm)" if installed else "(apt-get install "), ocr
    assert "history: schema - of 6, not created yet" in lines
    assert "collections: schema - of 1, not created yet" in lines
    assert "vector_store: ready" in lines and "history_store: ready" in lines
    assert "embeddings: ready" in lines  # a model in this process: loaded is ready
    # (stderr is mixed in: the embedding model's loading bar may share the line)
    assert "llm: NOT READY: the OpenAI-compatible server" in result.output
    assert result.exit_code == 1  # something is not ready


@pytest.mark.real
def test_ollama_embeddings_down_is_one_line_from_ask_and_not_ready_in_doctor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With hybrid retrieval (the default) `hearth ask` ended in a traceback of Ollama's
    ConnectionError, and `hearth doctor` said everything was ready."""
    from tests.conftest import MODELS, SMOLLM

    for name, value in {"DATA_DIR": str(tmp_path / "data"), "EMBEDDING_BACKEND": "ollama",
                        "OLLAMA_BASE_URL": closed_port_url(), "MODELS_DIR": str(MODELS),
                        "LLAMACPP_MODEL": SMOLLM, "LLAMACPP_N_CTX": "2048"}.items():
        monkeypatch.setenv(f"HEARTH_{name}", value)
    asked = CliRunner().invoke(main, ["ask", "Who turns the compost?"])
    assert isinstance(asked.exception, SystemExit), asked.exception  # not a traceback
    assert asked.exit_code == 1
    assert "Error: Ollama is not reachable at http://127.0.0.1:" in asked.output, asked.output
    doctor = CliRunner().invoke(main, ["doctor"])
    assert "embeddings: NOT READY: Ollama is not reachable" in doctor.output, doctor.output
    assert doctor.exit_code == 1


@pytest.mark.parametrize("user", ["", "   ", "team/ann", "ann\x07"])
def test_ask_refuses_a_user_the_api_could_never_name(user: str) -> None:
    """A turn stored for "team/ann" or " " could not be listed or erased through the API:
    refused before anything is loaded or stored."""
    for command in (["ask", "--user", user, "How do I ingest a folder?"],
                    ["keys", "create", "--user", user], ["users", "erase", "--yes", user]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        assert "Invalid value for" in result.output and "1 to 128 characters" in result.output


def test_an_erasure_that_fails_part_way_has_ended_access_and_says_what_is_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With history.sqlite3 damaged, `hearth users erase` failed having deleted collections and
    uploads but not the API keys, deleted last: the user could still ask. Keys and grants go
    first; the error says what was erased and what is left, and erasing again finishes."""
    data = tmp_path / "data"
    monkeypatch.setenv("HEARTH_DATA_DIR", str(data))
    for command in (["keys", "create", "--user", "ann"], ["keys", "create", "--user", "bob"],
                    ["collections", "create", "team", "--reader", "ann", "--reader", "bob"]):
        assert CliRunner().invoke(main, command).exit_code == 0, command
    history = data / "history.sqlite3"
    history.write_bytes(b"not a database, a note saved by mistake" * 50)
    failed = CliRunner().invoke(main, ["users", "erase", "ann", "--yes"])
    assert failed.exit_code == 1 and isinstance(failed.exception, SystemExit), failed.output
    assert failed.output == (
        f"Error: erasing 'ann' stopped: cannot open the history store at {history}: file is not "
        "a database. Erased: 1 API keys, 1 grants, 0 collections with 0 documents; not erased "
        "yet: their conversations. Run the erasure again to finish it\n")
    listed = CliRunner().invoke(main, ["keys", "list"]).output
    assert " ann " not in listed and " bob " in listed, listed
    assert "ann" not in CliRunner().invoke(main, ["collections", "show", "team"]).output
    history.unlink()  # the damaged file moved aside
    again = CliRunner().invoke(main, ["users", "erase", "ann", "--yes"])
    assert again.exit_code == 0 and again.output.startswith("Erased ann: 0 conversations"), \
        again.output
