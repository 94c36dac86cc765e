# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create the virtual environment in .venv the first time (a few minutes), then reuse it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unicon docs env clean-runs

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/medcl fit --config experiments/quickstart.yaml

unicon: $(STAMP)
	$(BIN)/medcl-stages experiments/unicon/0[1-4]_*.yaml --alternatives experiments/unicon/04b_ct_only_baseline.yaml --output runs/unicon

test: $(STAMP)
	$(BIN)/python -m pytest

# the documentation site (mkdocs.yml, docs/) into site/; strict: a broken link, page or anchor fails
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean-runs:
	rm -rf runs
