# The two commands of the README. Each sets everything up on a fresh machine first.
.PHONY: run test lint setup

run:
	scripts/bootstrap.sh run
	.venv/bin/hearth serve

test:
	scripts/bootstrap.sh test
	.venv/bin/ruff check .
	.venv/bin/mypy .
	.venv/bin/pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy .
