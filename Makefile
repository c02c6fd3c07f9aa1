# The two commands of the README. Each sets everything up on a fresh machine first.
.PHONY: run test test-fast lint setup compose-test

run:
	scripts/bootstrap.sh run
	.venv/bin/hearth serve

test:
	scripts/bootstrap.sh test
	.venv/bin/ruff check .
	.venv/bin/mypy .
	.venv/bin/pytest

# The fast tier alone (logic, fakes named as such; seconds), once `make test` has set up .venv.
test-fast:
	.venv/bin/pytest -m "not real"

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy .
	.venv/bin/lint-imports

# The Docker stack, built and started for real (docker compose up), with stand-ins for the
# images no registry serves here; not part of `test`. See scripts/compose-test.sh.
compose-test:
	scripts/compose-test.sh
