# Every target bootstraps what it needs: a fresh clone runs `make demo` or `make test` directly.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    ?= /tmp/reid-demo
PYTEST_ARGS ?=

.PHONY: setup browser demo test test-fast bench lint clean gpu-setup gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py reid/_jpegroi.c
	@# a C compiler and libjpeg's headers build reid/_jpegroi (without them: Pillow decodes whole JPEGs)
	@{ command -v cc >/dev/null 2>&1 && test -f /usr/include/jpeglib.h; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev libjpeg-dev >/dev/null; \
	  else echo "note: no C compiler or libjpeg headers: reid/_jpegroi will not be built"; fi; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: pip takes these wheels from local files (a CUDA build that also runs on CPU)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,weights]'
	touch $(STAMP)

# Debian's Chromium for the browser tests (the tests skip with a reason when it is absent).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: install Debian's chromium for the browser tests"; fi; }

demo: setup
	bash scripts/demo.sh $(DEMO)

test: setup browser
	$(BIN)/python -m pytest -q -ra --durations=25 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

# GPU machines: faiss-gpu (CUDA 12 wheels with their own runtime libraries) replaces faiss-cpu;
# both install the module `faiss`, so one goes before the other comes.
gpu-setup: setup
	$(BIN)/python -c "import faiss, sys; sys.exit(0 if hasattr(faiss, 'StandardGpuResources') else 1)" 2>/dev/null || { \
	  $(BIN)/pip uninstall -y -q faiss-cpu; $(BIN)/pip install -q 'faiss-gpu-cu12>=1.8'; }

# Every GPU path (training, embedding, JPEG decode, FAISS) in one run; figures under $$OUT or ./gpu-check-out.
gpu-check: gpu-setup
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

bench: setup
	for b in benchmarks/*.py; do [ $$b = benchmarks/gpu_check.py ] && continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/ruff check reid jobs cluster tests benchmarks scripts setup.py
	$(BIN)/ruff format --check reid jobs cluster tests benchmarks scripts setup.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
