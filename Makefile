# The two set-up commands of the README: `make quickstart` and `make test`.
# Each creates (or reuses) the virtual environment in .venv, installed from requirements.lock
# alone: every package pinned to an exact version with its sha256 hashes (`make lock` rewrites it).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
UV_VERSION := 0.13.9

.PHONY: venv venv-cpu quickstart test lint format bench lock doctor docs

venv: $(VENV)/.installed

# --no-deps: the lock already lists every transitive package; --require-hashes: a file whose
# hash differs from the lock's is refused; --no-build-isolation: the project builds with the
# locked setuptools instead of whatever the registry serves that day.
$(VENV)/.installed: $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps --only-binary :all: -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

quickstart: venv
	$(BIN)/cmkd distill --recipe quickstart

test: venv
	$(BIN)/python -m pytest -x -rs

doctor: venv
	$(BIN)/cmkd doctor

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: venv
	$(BIN)/python benchmarks/methods.py

# Re-resolve pyproject.toml's ranges (with the dev, export, docs and cluster extras) for every platform
# (--universal) and write exact versions + hashes. uv itself runs from a throwaway venv.
lock:
	test -x .cache/lock-venv/bin/uv || { $(PYTHON) -m venv .cache/lock-venv && \
	  .cache/lock-venv/bin/python -m pip install --quiet uv==$(UV_VERSION); }
	.cache/lock-venv/bin/uv pip compile pyproject.toml --extra dev --extra export --extra docs --extra cluster \
	  --universal --python-version 3.11 --generate-hashes --quiet -o $(LOCK)

# A CPU-only environment (about 1 GB instead of 4.7 GB of CUDA wheels): the CPU builds of the
# torch family from PyTorch's own index, then every other package at the lock's exact version
# (as constraints: the CPU wheels' hashes differ from the lock's, so hashes are left out).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
venv-cpu:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.11.0 torchaudio==2.11.0 torchvision==0.26.0 \
	  --index-url $(TORCH_CPU_INDEX)
	mkdir -p .cache
	sed -n 's/^\([A-Za-z0-9_.-]*==[^\\]*[^ \\]\) *\\\?$$/\1/p' $(LOCK) > .cache/constraints-cpu.txt
	$(BIN)/python -m pip install -c .cache/constraints-cpu.txt -e '.[dev,export]'
	$(BIN)/cmkd doctor
	touch $(VENV)/.installed

# The manual: docs/ built by MkDocs (strict: a broken link or anchor fails) into site/.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
