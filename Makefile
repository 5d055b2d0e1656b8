# Two commands a user needs: `make demo` and `make test` (both run as root).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo proto bench clean

setup:
	@bash scripts/setup.sh

proto: setup

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	.venv/bin/webb demo

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf .venv .stamps webb/api/flow webb/api/observer webb/api/peer webb/api/relay webb/api/stream
