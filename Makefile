# The README's two commands: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out
# The default run spreads test files over two processes (pytest-xdist); XDIST= runs them in one.
XDIST ?= -n 2 --dist loadfile

.PHONY: install demo test test-slow test-all test-tf-serving test-label-studio bench clean help

help:
	@echo "make install   build .venv (two-step pinned install; idempotent)"
	@echo "make demo      install, then run the main job end to end on the embedded synthetic dataset"
	@echo "make test      install if needed, then run the default (fast) test suite"
	@echo "make test-slow run the tests marked slow"
	@echo "make test-tf-serving  the serving tests against a real tensorflow_model_server (TENSORFLOW_MODEL_SERVER=/path; fails without one)"
	@echo "make test-label-studio  the Label Studio round trip against a real server on loopback (builds .venv-ls, apt-installs chromium)"
	@echo "make bench     run the benchmarks in benchmarks/"

install:
	@bash scripts/install.sh

demo: install
	$(PY) -m pipeline.demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest $(XDIST) -m "not slow and not tf_serving and not label_studio" tests

test-slow: install
	$(PY) -m pytest -m "slow and not tf_serving and not label_studio" tests

test-all: install
	$(PY) -m pytest -m "not tf_serving and not label_studio" tests

test-tf-serving: install
	$(PY) -m pytest -m tf_serving tests

# Label Studio runs from its own environment (.venv-ls; its pins clash with the TFX stack).
test-label-studio: install
	bash scripts/install_label_studio.sh
	$(PY) -m pytest -m label_studio tests

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO_OUT) tfx_out .pytest_cache
