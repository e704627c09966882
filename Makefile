# faeval: build the book, run the tests, run the benchmarks.
#
#   make book [PROFILE=smoke|quick|paper]   set up .venv, data and MathJax; train and execute the
#                                           first chapters, render them (path printed); then the
#                                           rest, and render the whole book
#                                           (SCHEDULER=tcp://host:8786: train on a Dask cluster)
#   make check-book                         open every built page in headless Chromium
#   make test [PYTEST_ARGS=...]             set up .venv, data and the browser; run pytest
#   make bench                              set up .venv and data; run benchmarks/*.py
#   make gpu-check-prepare                  copy the GPU check's data and CPU claims into .gpu_check/
#
# Every target sets up what it needs, from a machine with python3 (>= 3.10), pip, npm and
# apt. To use an environment you manage yourself (e.g. the conda environment of
# environment.yml, with a CUDA build of torch) instead of .venv, add USE_ENV=1: the
# `python` on PATH is used and nothing is pip-installed.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PROFILE ?= quick
PYTEST_ARGS ?=
# a Dask scheduler's address (e.g. tcp://10.0.0.5:8786): `make book` then trains the runs on that
# cluster; the run store (FAEVAL_RESULTS) must be a path every worker sees
SCHEDULER ?=
PYTHON ?= python3
VENV ?= .venv
# torch is installed before the package: a plain `pip install -e .` would fetch the CUDA
# build (several GB). Off this project's machines, add the CPU wheel index, e.g.
#   make test TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu'
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
MATHJAX_SPEC ?= mathjax@3
# when make started: build_book.py counts its renders' times from here
BUILD_START := $(shell date +%s)

ifeq ($(USE_ENV),1)
PY := $(shell command -v python)
ENV_READY := env-check
else
PY := $(VENV)/bin/python
ENV_READY := $(VENV)/.stamp
endif
BIN := $(dir $(PY))

.PHONY: help venv env-check data mathjax browser notebooks book check-book test bench gpu-check-prepare clean distclean

help:
	@sed -n '2,16s/^# \{0,1\}//p' Makefile

# --- environments ------------------------------------------------------------------------

venv: $(ENV_READY)

$(VENV)/.stamp: pyproject.toml Makefile
	@echo "== venv: $(VENV) (torch: $(TORCH_SPEC))"
	@start=$$(date +%s); \
	if [ ! -x "$(VENV)/bin/python" ]; then \
	  if ! $(PYTHON) -m venv "$(VENV)"; then \
	    echo "venv: '$(PYTHON) -m venv' failed (on Debian/Ubuntu, python3-venv is missing);" \
	         "creating it without pip and bootstrapping pip from the system pip"; \
	    rm -rf "$(VENV)"; \
	    $(PYTHON) -m venv --without-pip "$(VENV)"; \
	    $(PYTHON) -m pip --python "$(VENV)/bin/python" install pip; \
	  fi; \
	fi; \
	"$(VENV)/bin/python" -m pip install $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'; \
	"$(VENV)/bin/python" -m pip install -e '.[book,test,cluster]'; \
	"$(VENV)/bin/python" -m pip install --no-deps 'biotorch==0.0.16'; \
	echo "venv: ready in $$(( $$(date +%s) - start )) s"
	@touch $@

env-check:
	@test -n "$(PY)" || { echo "USE_ENV=1: no 'python' on PATH (activate your environment)"; exit 1; }
	@$(PY) -c "import faeval, faeval.book, torch, papermill, jupyter_book, pytest, importlinter, biotorch.layers" 2>/dev/null || { \
	  echo "USE_ENV=1: $(PY) lacks faeval, its book/test extras or biotorch; run: $(PY) -m pip install -e '.[book,test]' && $(PY) -m pip install --no-deps biotorch==0.0.16"; \
	  exit 1; }
	@echo "env: using $(PY) (torch $$($(PY) -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"

# --- data and MathJax --------------------------------------------------------------------

data:
	@scripts/ensure_data.sh

mathjax: _vendor/mathjax/tex-chtml.js

# MathJax 3 from the npm registry; its `es5` folder (tex-chtml.js, fonts, extensions) is
# what a page loads. Served with the book through html_extra_path (see _config.yml).
_vendor/mathjax/tex-chtml.js:
	@command -v npm >/dev/null || { echo "mathjax: npm not found; install Node.js and npm (e.g. apt-get install -y npm)"; exit 1; }
	@echo "== mathjax: npm install $(MATHJAX_SPEC)"
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	npm install --prefix "$$tmp" --no-audit --no-fund --no-save --loglevel=error $(MATHJAX_SPEC); \
	pkg="$$tmp/node_modules/mathjax"; \
	test -f "$$pkg/es5/tex-chtml.js" || { echo "mathjax: $$pkg/es5/tex-chtml.js missing: package layout changed"; exit 1; }; \
	mkdir -p _vendor; rm -rf _vendor/mathjax.tmp _vendor/mathjax; \
	cp -R "$$pkg/es5" _vendor/mathjax.tmp; \
	cp "$$pkg/LICENSE" _vendor/mathjax.tmp/LICENSE; \
	sed -n '/^ *"version": *"/{s/^ *"version": *"\(.*\)".*/\1/p;q;}' "$$pkg/package.json" > _vendor/mathjax.tmp/VERSION; \
	mv _vendor/mathjax.tmp _vendor/mathjax; \
	echo "mathjax: $$(cat _vendor/mathjax/VERSION) in _vendor/mathjax"

# Headless Chromium (apt package `chromium`) and playwright-core (npm, into the hidden .browser/)
# for the browser check of the built book.
CHROMIUM ?= /usr/bin/chromium
PLAYWRIGHT_CORE := $(CURDIR)/.browser/node_modules/playwright-core

browser: $(PLAYWRIGHT_CORE)/package.json
	@test -x "$(CHROMIUM)" || scripts/ensure_apt.sh chromium "$(CHROMIUM)"

$(PLAYWRIGHT_CORE)/package.json:
	@command -v npm >/dev/null || { echo "browser: npm not found; install Node.js and npm (e.g. apt-get install -y npm)"; exit 1; }
	@echo "== browser: npm install playwright-core"
	@npm install --prefix .browser --no-audit --no-fund --loglevel=error playwright-core

# --- the book ----------------------------------------------------------------------------

notebooks: $(ENV_READY) data
	@$(PY) scripts/book_toc.py --check
	@echo "== training the runs the notebooks ask for (profile $(PROFILE); stored runs are reused)"
	@$(PY) -m faeval.book prepare --profile $(PROFILE) --results "$${FAEVAL_RESULTS:-$(CURDIR)/results}" \
	  $(if $(SCHEDULER),--scheduler $(SCHEDULER))
	@$(PY) scripts/run_notebooks.py --profile $(PROFILE)

# MathJax first: a machine without npm fails before the notebooks run, not after. Two renders
# (scripts/build_book.py): the first chapters (quick start, audit, temporal, pitfalls) as soon as
# their runs are stored, the path printed; then every other run, and the whole book again.
book: mathjax $(ENV_READY) data
	@$(PY) scripts/book_toc.py --check
	@$(PY) scripts/build_book.py --profile $(PROFILE) --results "$${FAEVAL_RESULTS:-$(CURDIR)/results}" \
	  --since $(BUILD_START) $(if $(SCHEDULER),--scheduler $(SCHEDULER))

# open every built page in headless Chromium (screenshots go to _build/screenshots/)
check-book: browser
	@PLAYWRIGHT_CORE=$(PLAYWRIGHT_CORE) CHROMIUM=$(CHROMIUM) node scripts/check_book.mjs _build/html

# --- tests and benchmarks ----------------------------------------------------------------

test: $(ENV_READY) data browser
	PLAYWRIGHT_CORE=$(PLAYWRIGHT_CORE) CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(ENV_READY) data
	@shopt -s nullglob; files=(benchmarks/[!_]*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "bench: no benchmarks/*.py"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(PY) "$$f"; done

# the GPU check's inputs (scripts/gpu_check.py), into the ignored .gpu_check/ that a GPU machine is sent with:
# Fashion-MNIST's four files, CIFAR-10 where found and small enough to travel, results/claims/01_audit.json
gpu-check-prepare: $(ENV_READY) data
	@$(PY) scripts/gpu_check.py --prepare

clean:
	rm -rf _build book/executed

distclean: clean
	rm -rf $(VENV) _vendor
