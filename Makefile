# Two entry points, each sets everything up first (idempotent):
#   make run   -> virtualenv + install + the LiteRT converter venv + `pipeline run all`
#   make test  -> the same + the pinned Node packages (when npm is present) + the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
# every edge runtime by default (docs/runtimes.md), so CI tests every row; `make EXTRAS=cpu,dev` for a lean install
EXTRAS ?= cpu,dev,openvino,executorch,litert
ARGS ?=
JS ?= tests/js

comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
LITERT_STAMP := $(VENV)/.litert-converter-venv

.PHONY: setup js-setup run test clean
setup: $(STAMP) $(LITERT_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $@

# The LiteRT converter (litert-torch) conflicts with this environment's pins, so it gets its own venv layered over
# this one (runtime/litert_venv.py; under ~/.cache/edge-export-pipeline, $$EDGE_LITERT_VENV overrides). A failure
# (no network) is a note, not an error: LiteRT is one optional runtime, its rows and tests then skip saying why,
# everything else still runs (`pipeline run` skips the LiteRT rows naming the command that makes it). No stamp then,
# so the next `make` retries.
# The stamp follows the project's install (a new torch needs a new converter venv) and the module's pins.
$(LITERT_STAMP): $(STAMP) runtime/litert_venv.py
	@if $(VENV)/bin/python -m runtime.litert_venv; then touch $@; else \
	  echo "note: the LiteRT converter venv could not be created (above); the LiteRT rows and tests will be" \
	       "skipped with the reason. Retry with \`make setup\` or \`$(VENV)/bin/python -m runtime.litert_venv\`" >&2; fi

# The JS tests (Node bundle, JS preprocessing parity, the web bundle in Chromium) need the Node packages pinned in
# tests/js/package-lock.json. They are installed when npm is present and a package of tests/js/package.json is
# missing from tests/js/node_modules (one added since the last install, too), and left alone otherwise.
# --ignore-scripts: onnxruntime-node's install script downloads GPU binaries from outside the registry (its package
# already holds the CPU build). Without node and npm the JS tests skip, saying so. A node_modules that is a symbolic
# link (packages shared between checkouts) is never installed into: `npm ci` first empties node_modules, following
# the link into the shared folder, then replaces the link by a folder of its own.
NPM_CI := npm ci --ignore-scripts --no-audit --no-fund --prefix $(JS)
# exit 0 when every dependency of tests/js/package.json has its package.json under tests/js/node_modules
JS_INSTALLED := const fs = require("fs"); \
  const deps = Object.keys(JSON.parse(fs.readFileSync("$(JS)/package.json", "utf8")).dependencies || {}); \
  process.exit(deps.every((d) => fs.existsSync("$(JS)/node_modules/" + d + "/package.json")) ? 0 : 1);

js-setup:
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  echo "note: node/npm are missing; the JS tests will be skipped (Debian: apt-get install nodejs npm)" >&2; \
	elif node -e '$(JS_INSTALLED)'; then :; \
	elif [ -L $(JS)/node_modules ]; then \
	  echo "note: a pinned Node package is missing from $(JS)/node_modules, a link to $$(readlink $(JS)/node_modules);" \
	       "not installing through it (npm ci would empty the shared folder); the JS tests that need it will be skipped" >&2; \
	else echo "$(NPM_CI)"; $(NPM_CI); fi

run: setup
	$(VENV)/bin/pipeline run all $(ARGS)

test: setup js-setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

clean:
	rm -rf artifacts .pytest_cache
