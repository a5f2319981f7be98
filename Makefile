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
# The demo's two models, trained on the same data and budget (README, "The bundled demo models"):
# DiCyc is the default everywhere; CycleGAN stays beside it to show what DiCyc fixes.
MODEL_DICYC    := Resources/Models/head-mr2ct-dicyc.safetensors
MODEL_CYCLEGAN := Resources/Models/head-mr2ct-cyclegan.safetensors
SAMPLE_MR = "$$($(PY) -m dicyc samples head-mr)"
SAMPLE_CT = "$$($(PY) -m dicyc samples head-ct)"

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

# Both CTs keep what the generator puts outside the head (--keep-background), so the report can
# show a hallucinated head-rest; the report and the comparison then score them against the MR.
demo: $(RUN_STAMP)
	$(PY) -m dicyc samples head-mr head-ct
	$(PY) -m dicyc synthesize --model $(MODEL_DICYC) --target CT --keep-background \
	    --input $(SAMPLE_MR) --output $(DEMO)/synthetic-ct-dicyc.nii.gz
	$(PY) -m dicyc synthesize --model $(MODEL_CYCLEGAN) --target CT --keep-background \
	    --input $(SAMPLE_MR) --output $(DEMO)/synthetic-ct-cyclegan.nii.gz
	$(PY) -m dicyc report --source $(SAMPLE_MR) --real-ct $(SAMPLE_CT) --out $(DEMO)/report \
	    --synthetic CycleGAN=$(DEMO)/synthetic-ct-cyclegan.nii.gz DiCyc=$(DEMO)/synthetic-ct-dicyc.nii.gz
	$(PY) -m dicyc compare --a $(DEMO)/synthetic-ct-dicyc.nii.gz --b $(SAMPLE_MR) \
	    --out $(DEMO)/synthetic-ct-dicyc-vs-source-mr
	@echo "Demo written under $(DEMO)/: synthetic-ct-dicyc.nii.gz and synthetic-ct-cyclegan.nii.gz (on the MR's grid, in HU),"
	@echo "report/report.png (source MR, both CTs, outlines, head-rest, checkerboards, scores) with report/report.json,"
	@echo "and synthetic-ct-dicyc-vs-source-mr/ (compare.png, checkerboard.nii.gz, error.nii.gz, metrics.json)."

test: $(TEST_STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
