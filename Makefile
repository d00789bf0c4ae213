# The commands the README gives. `make test` and `make lab` create .venv when it is missing and
# reinstall only when pyproject.toml changed (the stamp file below), so a second run is quick.
PYTHON ?= python3
MIN_PYTHON = 3.10
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.course-installed
LAB_PORT ?= 8888
LAB_ARGS ?=
# Jupyter refuses to run as root unless told; containers and CI often are root.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
NOTEBOOKS ?= $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
XDIST  ?= -n 2 --dist loadscope
# Every process of the test run (xdist workers, Jupyter kernels, torchrun workers) imports
# tests/offline/sitecustomize.py, which refuses connections beyond loopback and names the host.
OFFLINE = PYTHONPATH="$(CURDIR)/tests/offline"
NBVAL   = --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
# Optional: install torch and torchvision from another package index first, e.g. PyTorch's CPU-only
# wheels (a few hundred MB instead of several GB of CUDA libraries on Linux):
#   make lab TORCH_INDEX=https://download.pytorch.org/whl/cpu
# A change of TORCH_INDEX re-runs the install; without it, nothing changes.
TORCH_INDEX ?=
TORCH_MARK  = $(VENV)/.torch-index
ifneq ($(strip $(TORCH_INDEX)),$(strip $(shell cat "$(TORCH_MARK)" 2>/dev/null)))
$(shell mkdir -p "$(VENV)" && printf '%s\n' '$(strip $(TORCH_INDEX))' > "$(TORCH_MARK)")
endif

.PHONY: install lab test unit alltests site site-test screenshots mutate verify reproducibility notebooks execute bench doctor lint clean help

help:
	@echo "make lab      start JupyterLab on the course (installs on first use)"
	@echo "make test     lint, every test and doctest, and every notebook in fast mode"
	@echo "make unit     the quick tests only (no slow or end-to-end ones)"
	@echo "make execute  re-run every notebook in full mode and save its outputs"
	@echo "make bench    run benchmarks/ and write benchmarks/results/"
	@echo "make site     build the course website in site/ from the stored outputs"
	@echo "make verify NB=14  re-run one notebook and compare its numbers with the course's"
	@echo "make doctor   check this machine for the course and say what to fix"
	@echo "make gpu-check  on a CUDA GPU: GPU tests, notebooks 00/08/15, benchmarks, torchrun with NCCL (<= 8 min)"

$(PY):
	@$(PYTHON) -c 'import sys; need = tuple(map(int, "$(MIN_PYTHON)".split("."))); v = sys.version_info[:2]; \
	  sys.exit(0 if v >= need else "The course needs Python $(MIN_PYTHON) or newer; $(PYTHON) is %d.%d (%s).\nInstall a newer Python and run e.g.: make PYTHON=python3.12 test" % (v + (sys.executable,)))'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(wildcard $(TORCH_MARK)) | $(PY)
	$(PY) -m pip install --upgrade pip
	$(if $(strip $(TORCH_INDEX)),$(PY) -m pip install --index-url "$(strip $(TORCH_INDEX))" torch torchvision)
	$(PY) -m pip install -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
	  --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks $(LAB_ROOT) $(LAB_ARGS)

# The quick loop while editing: unit, property and repository tests and the doctests, without
# the tests marked slow and without the end-to-end ones (JupyterLab, browser, torchrun).
unit: $(STAMP)
	$(OFFLINE) $(PY) -m pytest $(XDIST) -m "not slow and not site" --doctest-modules tests/unit tests/properties tests/repo course_utils

# Every test, slow and end-to-end ones included: what `make test` runs before the notebooks.
alltests: $(STAMP)
	$(OFFLINE) $(PY) -m pytest $(XDIST) -m "not site" --doctest-modules tests course_utils

notebooks: $(STAMP)
	$(OFFLINE) COURSE_FAST=1 TQDM_DISABLE=1 MPLBACKEND=Agg $(PY) -m pytest $(XDIST) $(NBVAL) $(NOTEBOOKS)

test: lint alltests notebooks

# Does this machine reproduce one notebook's numbers? NB=14 (a number) or a path. Runs it in full
# mode with its own copy of the reports and compares each result with the stored value and range.
NB ?=
verify: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make verify NB=14"; exit 2; }
	$(PY) scripts/verify.py $(NB)

# How much each trained result moves across CPU kernels and thread counts (hours on 2 cores):
# writes reports/reproducibility.json, which `make verify` compares against.
reproducibility: $(STAMP)
	$(PY) scripts/reproducibility.py --trained

# Mutation testing of one module (or MODULE=--all): plants small bugs one at a time and reports the
# ones the tests miss in reports/mutation.md. Minutes per module on 2 cores; not part of `make test`.
MODULE ?=
mutate: $(STAMP)
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -e ".[test,dev]"
	@test -n "$(MODULE)" || { echo "usage: make mutate MODULE=course_utils/attention.py  (or MODULE=--all)"; exit 2; }
	$(PY) scripts/mutate.py $(MODULE)

# The course as a website in site/ (ignored by git), from the notebooks' stored outputs; offline.
site: $(STAMP)
	@$(PY) -c "import myst_nb, sphinx_book_theme" 2>/dev/null || $(PY) -m pip install -e ".[test,site]"
	$(PY) scripts/build_site.py --check

# Build the site, then check it in a real browser (.ci/run calls this after `make test`).
site-test: site
	$(OFFLINE) $(PY) -m pytest -m site tests/e2e/test_site.py

# Refresh the committed browser screenshot (tests otherwise write it to build/screenshots/).
screenshots: site
	COURSE_SCREENSHOT_DIR=reports/screenshots $(OFFLINE) $(PY) -m pytest tests/e2e/test_browser.py tests/e2e/test_site.py

execute: $(STAMP)
	$(PY) scripts/execute_notebooks.py $(NOTEBOOKS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

doctor: $(STAMP)
	$(PY) -m course_utils.doctor

# Everything only a CUDA GPU can show, in at most 8 minutes, offline; one line and exit 0 without a GPU.
gpu-check: $(STAMP)
	$(OFFLINE) $(PY) scripts/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check course_utils tests scripts benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
