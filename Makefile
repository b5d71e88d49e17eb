# socketrace: set-up, tests, single-file build. Run as root on Debian 12 or Ubuntu 24.04.
#   make run ARGS='--filter-port 22'   set up everything, then trace
#   make test                          set up everything, then lint and run all tests

SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
# BCC from the distribution; the tools the tests drive; QEMU and what the VM harness builds guests with.
APT_PACKAGES := python3-bpfcc python3-venv python3-pip clang llvm iproute2 netcat-openbsd curl kmod \
	qemu-system-x86 qemu-system-arm qemu-user-static mmdebstrap
# Debian names bpftool on its own; Ubuntu ships it in linux-tools.
APT_OPTIONAL := bpftool
ARGS ?=

.PHONY: all deps venv run test lint unit-test kernel-test vm-test bench dist clean

all: venv

deps: $(VENV)/.deps
$(VENV)/.deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi
	@for pkg in $(APT_OPTIONAL); do \
		dpkg -s $$pkg >/dev/null 2>&1 || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkg || \
		echo "note: $$pkg is not available; the BTF oracle test will skip"; \
	done
	@mkdir -p $(VENV) && touch $@

# A venv of the system Python that sees only BCC from the system packages.
venv: $(VENV)/.installed
$(VENV)/.installed: $(VENV)/.deps pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	ln -sfn "$$($(SYSTEM_PYTHON) -c 'import bcc, os; print(os.path.dirname(bcc.__file__))')" \
		"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc"
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: venv
	$(BIN)/socketrace $(ARGS)

lint: venv
	$(BIN)/ruff check socketrace tests bench
	$(BIN)/ruff format --check socketrace tests bench

test: lint
	$(BIN)/pytest -v -rs tests

unit-test: venv
	$(BIN)/pytest -v -rs tests/unit

kernel-test: venv
	$(BIN)/pytest -v -rs tests/kernel

# Boots Debian 6.1 and 6.12 under QEMU (about 10 minutes): the kprobe backends.
vm-test: venv
	$(BIN)/pytest -v -rs tests/vm

bench: venv
	$(BIN)/python bench/bench_output.py

# One file that runs with the system python3 wherever python3-bpfcc is installed.
dist: dist/socketrace
dist/socketrace: venv $(shell find socketrace bpf -type f) pyproject.toml
	rm -rf build/zipapp && mkdir -p build/zipapp dist
	$(BIN)/pip install -q --no-compile --target build/zipapp click tqdm pyelftools
	cp -rL socketrace build/zipapp/socketrace
	find build/zipapp -name __pycache__ -prune -exec rm -rf {} +
	printf 'import sys\nfrom socketrace.entry import main\nsys.exit(main())\n' > build/zipapp/__main__.py
	$(SYSTEM_PYTHON) -m zipapp build/zipapp -o $@ -p $(SYSTEM_PYTHON)
	@echo "built $@"

clean:
	rm -rf build dist $(VENV) .pytest_cache .ruff_cache
