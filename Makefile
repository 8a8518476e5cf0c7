# The two commands of the README. Both set up what they need first (scripts/setup.sh).
.PHONY: up test setup

setup:
	@scripts/setup.sh

# The local stack on SQLite + local storage, with demo work pushed through it.
up: setup
	.venv/bin/taskfleet up --demo $(UP_ARGS)

# The whole test suite. pytest's "no tests collected" (exit 5) is a failure here, said in words:
# this project always has tests, so collecting none means the suite is broken.
test: setup
	@.venv/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; exit 1; fi; \
	exit $$rc
