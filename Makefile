# nanoclaw: `make run` to start, `make test` to check. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR := $(or $(NANOCLAW_HOME),$(HOME)/.nanoclaw)

.PHONY: install run test bench lines clean install-service bridge

PIP    := $(BIN)/pip install --quiet --disable-pip-version-check

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PIP) -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# Onboard on the first run; then start the gateway, or say which key is missing.
run: install
	@[ -e "$(HOME_DIR)/config.yaml" ] || [ -e "$(HOME_DIR)/config.json" ] || $(BIN)/python nanoclaw.py onboard
	@$(BIN)/python nanoclaw.py status >/dev/null    # a config mistake: its one line, and make stops
	@if $(BIN)/python -c "from lib.config import load_config; from lib.providers.registry import resolve; resolve(load_config())" 2>/dev/null; \
	then echo "Starting the gateway (Ctrl+C stops it). To chat here instead: $(BIN)/python nanoclaw.py agent"; \
	     exec $(BIN)/python nanoclaw.py gateway; \
	else $(BIN)/python nanoclaw.py status; echo; \
	     echo "Set one provider key (see 'provider' above) in $(HOME_DIR)/config.yaml, then run 'make run' again."; fi

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -n auto
	@if command -v node >/dev/null; then node --test bridge/test/; \
	else echo "note: node is not installed: skipped the WhatsApp bridge tests (node --test bridge/test/)"; fi

# The WhatsApp bridge's packages (Node.js 20+ and npm), exactly as bridge/package-lock.json pins them.
bridge:
	cd bridge && npm ci --no-audit --no-fund

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/gateway_bench.py
	$(BIN)/python bench/mcp_bench.py

# Run 24/7 under systemd: renders deploy/nanoclaw.service for this checkout, this user and this
# home folder, installs it as /etc/systemd/system/nanoclaw.service and starts it (now and at every
# boot). Run it as yourself, not with sudo: it calls sudo for the steps that need root.
UNIT_FILE := /etc/systemd/system/nanoclaw.service
install-service: install
	@set -e; \
	if [ "$$(id -u)" = 0 ] && [ -n "$$SUDO_USER" ]; then \
	  echo "Run 'make install-service' without sudo, as the user the assistant should run as; it asks for sudo itself." >&2; exit 2; fi; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	user=$$(id -un); repo="$(CURDIR)"; home=$$(realpath -m "$(HOME_DIR)"); \
	[ -e "$$home/config.yaml" ] || [ -e "$$home/config.json" ] || { \
	  echo "No config in $$home yet: run 'make run' first (it onboards), set a provider key, then try again." >&2; exit 2; }; \
	env -i HOME="$$HOME" NANOCLAW_HOME="$$home" $(BIN)/python nanoclaw.py status >/dev/null; \
	ws=$$(env -i HOME="$$HOME" NANOCLAW_HOME="$$home" $(BIN)/python -c "from lib.config import load_config; \
	  from lib.providers.registry import resolve; c = load_config(); resolve(c); print(c.workspace)" 2>/dev/null) || { \
	  echo "The service would have no provider key: put it in $$home/config.yaml (a service does not see the variables exported in your shell)." >&2; exit 2; }; \
	case "$$repo$$home$$ws" in *" "*) echo "Paths with spaces are not supported in the unit: $$repo, $$home, $$ws" >&2; exit 2;; esac; \
	echo "This needs root (sudo) to write $(UNIT_FILE) and to start the service."; \
	was=$$(systemctl is-active nanoclaw 2>/dev/null || true); \
	sed -e "s|@REPO@|$$repo|g" -e "s|@PYTHON@|$$repo/$(BIN)/python|g" -e "s|@USER@|$$user|g" \
	    -e "s|@NANOCLAW_HOME@|$$home|g" -e "s|@WORKSPACE@|$$ws|g" deploy/nanoclaw.service \
	  | $$sudo tee $(UNIT_FILE) >/dev/null; \
	echo "wrote $(UNIT_FILE): user $$user, code $$repo, home $$home, workspace $$ws"; \
	$$sudo systemctl daemon-reload; echo "ran systemctl daemon-reload"; \
	$$sudo systemctl enable --now nanoclaw; echo "ran systemctl enable --now nanoclaw (starts now and at every boot)"; \
	if [ "$$was" = active ]; then $$sudo systemctl restart nanoclaw; echo "ran systemctl restart nanoclaw (it was already running)"; fi; \
	echo "Check it: systemctl status nanoclaw    Follow its log: journalctl -u nanoclaw -f"

# Lines of code (no blanks, no comment lines): the core promise is <= 3,000. Each part of the second
# wave in DESIGN.md's table (the message contract, sandbox, address guard, approvals, usage, web,
# MCP) lives in its own module and is counted apart; lib/ in all stays under 10,000.
CAPABILITIES := lib/mail.py lib/sandbox.py lib/netguard.py lib/approvals.py lib/usage.py lib/mcp.py lib/web
lines:
	@count() { [ $$# -gt 0 ] && cat "$$@" | grep -cvE '^\s*(#|$$)' || echo 0; }; \
	core=$$(count $$(find lib -name '*.py' ! -path 'lib/channels/*' ! -name cli.py $(foreach c,$(CAPABILITIES),! -path '$(c)' ! -path '$(c)/*'))); \
	printf 'core (lib/ without channels/, cli.py and the capabilities below): %s lines (budget 3000)\n' $$core; \
	for c in $(CAPABILITIES); do [ -e $$c ] && printf '  %-20s %s lines\n' $$c $$(count $$(find $$c -name '*.py')); done; \
	printf 'lib/channels/: %s lines\nlib/ in all: %s lines (budget 10000)\n' \
	  $$(count $$(find lib/channels -name '*.py')) $$(count $$(find lib -name '*.py'))

clean:
	rm -rf $(VENV) .pytest_cache bench/.nanobot-venv
