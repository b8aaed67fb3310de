# Two entry points, each sets everything up first (idempotent):
#   make run   -> virtualenv + install + `pipeline run all`
#   make test  -> virtualenv + install + the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,dev
ARGS ?=

comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup run test clean
setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $@

run: setup
	$(VENV)/bin/pipeline run all $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

clean:
	rm -rf artifacts .pytest_cache
