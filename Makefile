# The README's two commands: `make demo` and `make test`, each setting up what it needs on a bare
# machine: .venv (pinned torch from the constraints file) and, for the tests, Debian's chromium,
# which the console's browser tests drive through Playwright (Playwright's own download cannot work).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
LS_VENV := .venv-ls
LS_STAMP := $(LS_VENV)/.installed
LABEL_STUDIO ?= label-studio==1.23.2 sentry-sdk<3  # sentry-sdk 3 drops an option label-studio passes

.PHONY: setup browser label-studio demo lint test test-fast bench clean
CODE    := raysegment tests benchmarks jobs examples

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Label Studio for the labelling round-trip test, in a virtual environment of its own (~1 GB, Django
# and many pins): a real server the test talks to over HTTP, never a dependency of raysegment.
$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PY) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --upgrade pip
	$(LS_VENV)/bin/pip install --quiet $(foreach p,$(LABEL_STUDIO),'$(p)')
	touch $(LS_STAMP)

label-studio: $(LS_STAMP)

# apt as root, else through sudo; nothing to do where chromium is already installed.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (the console's browser tests need it)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: $(STAMP)
	$(BIN)/raysegment demo --out demo_out

# The cheapest checks first: lint and format (seconds), types (under a minute), then the tests.
lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy raysegment benchmarks examples jobs  # benchmarks rot unseen otherwise (bench_tune did)

test: lint browser $(LS_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --timeout=900 --durations=40

test-fast: $(STAMP) browser $(LS_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" --timeout=600

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_augment.py
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf demo_out runs .pytest_cache
