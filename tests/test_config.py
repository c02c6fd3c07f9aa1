"""Settings: defaults, profiles, environment, .env, and errors that name the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hearth.config import ConfigError, LLMBackend, Profile, load_settings


def test_embedded_defaults() -> None:
    s = load_settings(_env_file=None)
    assert s.profile is Profile.embedded
    assert (s.host, s.port, s.llm_backend) == ("127.0.0.1", 8000, LLMBackend.llamacpp)
    assert (s.temperature, s.max_new_tokens, s.top_k) == (0.2, 256, 4)
    assert s.chroma_url is None and s.mongodb_uri is None
    assert s.n_threads >= 1


def test_compose_profile_switches_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_PROFILE", "compose")
    s = load_settings(_env_file=None)
    assert s.llm_backend is LLMBackend.ollama
    assert s.ollama_base_url == "http://ollama:11434"
    assert s.mongodb_uri and s.mongodb_uri.startswith("mongodb://mongo:27017")
    assert s.chroma_url == "http://chroma:8000"
    assert s.auth is True


def test_an_explicit_variable_beats_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_PROFILE", "compose")
    monkeypatch.setenv("HEARTH_OLLAMA_MODEL", "llama3.2:3b")
    monkeypatch.setenv("HEARTH_CHROMA_URL", "http://127.0.0.1:9000")
    s = load_settings(_env_file=None)
    assert (s.ollama_model, s.chroma_url) == ("llama3.2:3b", "http://127.0.0.1:9000")


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("HEARTH_TOP_K=7\nHEARTH_MONGODB_URI=\n")
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.top_k == 7 and s.mongodb_uri is None


def test_a_dotenv_file_not_in_utf8_is_one_line_naming_it(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env saved as Latin-1 ("très") stopped every command with UnicodeDecodeError's
    traceback."""
    from click.testing import CliRunner

    from hearth.cli import main

    (tmp_path / ".env").write_bytes("HEARTH_TOP_K=5\nHEARTH_PERSONA=Tu es Hearth, très utile.\n"
                                    .encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "data"))
    told = (f"cannot read {tmp_path / '.env'}: line 2 is not UTF-8 text (byte 0xe8): save the file "
            "as UTF-8")
    with pytest.raises(ConfigError, match="^" + re.escape(told) + "$"):
        load_settings()
    result = CliRunner().invoke(main, ["keys", "list"])
    assert result.exit_code == 1 and result.output == f"Error: {told}\n", result.output
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name, value, words", [
    ("HEARTH_TOP_K", "many", "valid integer"),
    ("HEARTH_PORT", "70000", "less than or equal to 65535"),
    ("HEARTH_LLM_BACKEND", "gpt5", "'llamacpp', 'ollama', 'openai' or 'transformers'"),
    ("HEARTH_PROFILE", "cloud", "'embedded' or 'compose'"),
    ("HEARTH_TEMPERATURE", "-1", "greater than or equal to 0"),
])
def test_invalid_values_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    assert name in str(err.value) and words in str(err.value) and value in str(err.value)


@pytest.mark.parametrize("name, value, words", [
    ("HEARTH_RATE_LIMIT", "2 per banana", "not a rate limit"),
    ("HEARTH_QUESTION_RATE_LIMIT", "often", "not a rate limit"),
    ("HEARTH_MONGODB_URI", "mongo://db:27017", "a MongoDB connection string"),
    ("HEARTH_MONGODB_URI", "mongodb://ann:s3cret@db:99999/", "Port must be"),
    ("HEARTH_MONGODB_DB", "my.db", "a MongoDB database name"),
    ("HEARTH_REFUSAL", "...", "must say something"),
    ("HEARTH_MAX_NEW_TOKENS", "3800", "at most 3584"),
])
def test_values_that_broke_only_at_run_time_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    """Each was taken and broke later: a 500 on every question or probe, a question limit
    quietly off, every answer taken for a refusal, every question a 413 'too long'."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    assert name in str(err.value) and words in str(err.value), err.value
    assert "s3cret" not in str(err.value)  # a connection string is never repeated
    # What they stand for, well written, is taken.
    good = {"HEARTH_RATE_LIMIT": "10 per second; 500 per hour", "HEARTH_QUESTION_RATE_LIMIT": "5/minute",
            "HEARTH_MONGODB_URI": "mongodb://127.0.0.1:27017/?directConnection=true",
            "HEARTH_MONGODB_DB": "hearth_test", "HEARTH_REFUSAL": "Not in the documents.",
            "HEARTH_MAX_NEW_TOKENS": "3584"}[name]
    monkeypatch.setenv(name, good)
    assert load_settings(_env_file=None)


def test_a_misspelt_variable_is_named_with_the_setting_meant(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """HEARTH_AUTH_REQUIRED=true, HEARTH_TOPK, HEARTH_PROT were ignored without a word: an
    operator who meant to turn keys on was not told. The variables Hearth's own tools read
    (HEARTH_LLAMA_SERVER) and a setting in lower case are not warned about."""
    from hearth.config import unknown_variables

    (tmp_path / ".env").write_text("HEARTH_PROT=8001\nHEARTH_TOP_K=5\nHEARTH_CHROMA=x\n")
    monkeypatch.chdir(tmp_path)
    for name, value in (("HEARTH_AUTH_REQUIRED", "true"), ("HEARTH_TOPK", "0"),
                        ("HEARTH_LLAMA_SERVER", "/opt/llama-server"), ("hearth_top_k", "3"),
                        ("HEARTH_WHATEVER_ELSE", "1")):
        monkeypatch.setenv(name, value)
    assert unknown_variables() == [
        "HEARTH_AUTH_REQUIRED in the environment is not a setting: ignored (did you mean "
        "HEARTH_AUTH?)",
        "HEARTH_CHROMA in .env is not a setting: ignored (did you mean HEARTH_CHROMA_URL?)",
        "HEARTH_PROT in .env is not a setting: ignored (did you mean HEARTH_PORT?)",
        "HEARTH_TOPK in the environment is not a setting: ignored (did you mean HEARTH_TOP_K?)",
        "HEARTH_WHATEVER_ELSE in the environment is not a setting: ignored",
    ]
    assert load_settings().top_k == 3  # a warning only: the settings still load


def test_a_folder_setting_expands_the_home_folder_and_may_not_be_blank(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HEARTH_DATA_DIR=~/hearth-data in .env (which no shell expands) made a folder named "~"
    in the current one; HEARTH_DATA_DIR= wrote the stores into the current folder."""
    from click.testing import CliRunner

    from hearth.cli import main

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (work / ".env").write_text("HEARTH_DATA_DIR=~/hearth-data\nHEARTH_MODELS_DIR=~/models\n"
                               "HEARTH_DOCS_DIR=~/docs\nHEARTH_INGEST_ROOTS=~/notes,/srv/docs\n")
    s = load_settings()
    assert (s.data_dir, s.models_dir, s.docs_dir) == (home / "hearth-data", home / "models",
                                                      home / "docs")
    assert s.ingest_roots == [home / "notes", Path("/srv/docs")]
    assert CliRunner().invoke(main, ["keys", "create", "--user", "ann"]).exit_code == 0
    assert (home / "hearth-data" / "keys.sqlite3").is_file() and list(work.iterdir()) == [work / ".env"]
    for name in ("HEARTH_DATA_DIR", "HEARTH_MODELS_DIR", "HEARTH_DOCS_DIR"):
        for blank in ("", "  "):
            monkeypatch.setenv(name, blank)
            with pytest.raises(ConfigError, match=f"{name}: blank: give a folder, or leave the "
                               "variable out for the default"):
                load_settings()
            result = CliRunner().invoke(main, ["keys", "create", "--user", "bob"])
            assert result.exit_code == 1 and name in result.output, result.output
        monkeypatch.delenv(name)
    assert list(work.iterdir()) == [work / ".env"]  # nothing written here


def test_a_folder_setting_that_names_a_file_is_invalid(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """HEARTH_DATA_DIR naming a file: `migrate --status` said "not created yet" and `sources
    list` "Nothing ingested yet", both exiting 0; other commands failed naming another error."""
    from click.testing import CliRunner

    from hearth.cli import main

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for name in ("HEARTH_DATA_DIR", "HEARTH_MODELS_DIR", "HEARTH_DOCS_DIR"):
        for value in (a_file, a_file / "below"):
            monkeypatch.setenv(name, str(value))
            told = f"invalid setting {name}: {a_file} is a file, not a folder (got '{value}')"
            for command in (["migrate", "--status"], ["sources", "list"], ["doctor"]):
                result = CliRunner().invoke(main, command)
                assert result.exit_code == 1 and result.output == f"Error: {told}\n", \
                    (command, result.output)
        monkeypatch.delenv(name)
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "data"))  # a folder yet to be made
    assert load_settings(_env_file=None).data_dir == tmp_path / "data"


def test_every_setting_is_described_in_the_configuration_guide() -> None:
    """docs/configuration.md is where a user looks a setting up: each one is there by name
    (.env.example lists them too: tests/test_deploy.py)."""
    from hearth.config import Settings

    guide = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = [f"HEARTH_{name.upper()}" for name in Settings.model_fields
               if f"HEARTH_{name.upper()}`" not in guide]
    assert missing == [], missing
