# nanoclaw: `make run` to start, `make test` to check. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR := $(or $(NANOCLAW_HOME),$(HOME)/.nanoclaw)

.PHONY: install run test bench lines clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# Onboard on the first run; then chat, or say which key is missing.
run: install
	@[ -e "$(HOME_DIR)/config.yaml" ] || [ -e "$(HOME_DIR)/config.json" ] || $(BIN)/python nanoclaw.py onboard
	@if $(BIN)/python -c "from lib.config import load_config; from lib.providers.registry import resolve; resolve(load_config())" 2>/dev/null; \
	then $(BIN)/python nanoclaw.py agent; \
	else $(BIN)/python nanoclaw.py status; echo; \
	     echo "Set one provider key (see 'provider' above) in $(HOME_DIR)/config.yaml, then run 'make run' again."; fi

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/bench.py

# Lines of code (no blanks, no comment lines): the core promise is <= 3,000.
lines:
	@count() { cat "$$@" | grep -cvE '^\s*(#|$$)'; }; \
	core=$$(count $$(find lib -name '*.py' ! -path 'lib/channels/*' ! -name cli.py)); \
	all=$$(count $$(find lib -name '*.py')); \
	printf 'core (lib/ without channels/ and cli.py): %s lines (budget 3000)\nlib/ in all: %s lines\n' $$core $$all

clean:
	rm -rf $(VENV) .pytest_cache
