# The two commands of the README. Both set up what they need first (scripts/setup.sh).
.PHONY: up test setup

setup:
	@scripts/setup.sh

# The local stack on SQLite + local storage, with demo work pushed through it.
up: setup
	.venv/bin/taskfleet up --demo $(UP_ARGS)

# The whole test suite; pytest's "no tests collected" (exit 5) counts as a failure here too,
# since this project always has tests.
test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)
