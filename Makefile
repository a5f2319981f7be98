# The README's two commands: `make demo` and `make test`. Each creates .venv/ at the repo root
# and installs everything it needs into it, so both work on a fresh clone.
PYTHON ?= python3
# The CPU wheel pinned here; on a CUDA workstation set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
RUN_STAMP  := $(VENV)/.dicyc-run
TEST_STAMP := $(VENV)/.dicyc-test
DEMO   := demo-output
MODEL  := Resources/Models/head-mr2ct-cyclegan.safetensors

.PHONY: demo test install clean

install: $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e '.[train]'
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(PIP) -e '.[train,test]'
	touch $(TEST_STAMP)

demo: $(RUN_STAMP)
	$(PY) -m dicyc samples head-mr head-ct
	$(PY) -m dicyc synthesize --model $(MODEL) --target CT \
	    --input "$$($(PY) -m dicyc samples head-mr)" --output $(DEMO)/synthetic-ct.nii.gz
	$(PY) -m dicyc compare --a $(DEMO)/synthetic-ct.nii.gz --b "$$($(PY) -m dicyc samples head-mr)" \
	    --error-units window --out $(DEMO)/synthetic-ct-vs-source-mr
	$(PY) -m dicyc compare --a $(DEMO)/synthetic-ct.nii.gz --b "$$($(PY) -m dicyc samples head-ct)" \
	    --error-units window --out $(DEMO)/synthetic-ct-vs-real-ct
	@echo "Demo written under $(DEMO)/: synthetic-ct.nii.gz and two comparison reports (compare.png, checkerboard.nii.gz, error.nii.gz, metrics.json)."

test: $(TEST_STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
