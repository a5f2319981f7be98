# The README's two commands: `make demo` and `make test`. Each creates .venv/ at the repo root
# and installs everything it needs into it, so both work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dicyc-installed
DEMO   := demo-output

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dicyc samples head-mr head-ct brainweb-pd brainweb-pd-bsplined10
	$(PY) -m dicyc compare --a "$$($(PY) -m dicyc samples brainweb-pd)" \
	    --b "$$($(PY) -m dicyc samples brainweb-pd-bsplined10)" --tiles 6 --out $(DEMO)/brainweb-pd-vs-deformed
	$(PY) -m dicyc evaluate --pred "$$($(PY) -m dicyc samples brainweb-pd-bsplined10)" \
	    --ref "$$($(PY) -m dicyc samples brainweb-pd)"
	$(PY) -m dicyc compare --a "$$($(PY) -m dicyc samples head-mr)" \
	    --b "$$($(PY) -m dicyc samples head-ct)" --error-units window --out $(DEMO)/head-mr-vs-ct
	@echo "Demo report written under $(DEMO)/ (compare.png, checkerboard.nii.gz, error.nii.gz, metrics.json)."

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
