# socketrace: set-up, tests, builds, benchmarks. Run as root on Debian 12 or Ubuntu 24.04.
#   make run ARGS='--filter-port 22'   set up everything, then trace
#   make test                          set up everything, then lint and run all tests (this kernel, then VMs)
#   make test-full                     the same, with both tiers in every guest (for releases)

SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
# BCC from the distribution; the tools the tests drive and the oracles they compare with (bpftrace,
# ss, real servers and clients); QEMU and what the VM harness builds guests with.
APT_PACKAGES := python3-bpfcc python3-venv python3-pip pipx clang llvm gcc iproute2 netcat-openbsd curl kmod \
	util-linux bpftrace openssh-server openssh-client apache2-utils nginx-light \
	qemu-system-x86 qemu-system-arm qemu-user-static mmdebstrap
# Debian names bpftool on its own; Ubuntu ships it in linux-tools.
APT_OPTIONAL := bpftool
ARGS ?=

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' socketrace/__init__.py)
WHEEL := dist/socketrace-$(VERSION)-py3-none-any.whl
SOURCES := $(shell find socketrace bpf -type f -not -path '*/__pycache__/*') pyproject.toml

.PHONY: all deps venv run test test-full lint unit-test kernel-test vm-test bench bench-vm dist wheel clean

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
	# compat: a plain path in a .pth, not an import hook (which costs 0.3 s of start-up under emulation)
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

run: venv
	$(BIN)/socketrace $(ARGS)

lint: venv
	$(BIN)/ruff check socketrace tests bench
	$(BIN)/ruff format --check socketrace tests bench

# This kernel's tiers, then six Debian guests (see tests/vm), two at a time, each running what its
# kernel and userland can change; test-full runs both tiers in every guest. The slowest tests are listed.
test: lint unit-test kernel-test vm-test

test-full: export SOCKETRACE_TEST_PLAN = full
test-full: test

unit-test: venv
	$(BIN)/pytest -v -rs --durations=5 tests/unit

kernel-test: venv dist wheel
	$(BIN)/pytest -v -rs --durations=15 tests/kernel

# The guests share a budget from the tier's start (tests/vm/test_guests.py: SOCKETRACE_VM_BUDGET);
# one guest per worker at a time, in the list's order (longest first), so the two workers balance.
vm-test: venv dist wheel
	rm -rf build/platforms
	SOCKETRACE_VM_STARTED=$$(date +%s) $(BIN)/pytest -v -rs --durations=6 -n 2 --maxschedchunk 1 tests/vm
	@echo "platforms:" && cat build/platforms/*.md && echo "guest times:" && cat build/platforms/*.times

# Side by side in one run: untraced, floors and socketrace, as ratios over rounds (README, Performance).
bench: venv
	$(BIN)/python bench/bench_output.py
	$(BIN)/python bench/bench_load.py

# The same in the Debian 6.12 guest (kprobe-multi; 2 vCPUs under QEMU).
bench-vm: venv
	$(BIN)/python -m tests.vm.harness 6.12 --cpus 2 --timeout 3600 -- \
		sh -c '.venv/bin/python bench/bench_output.py && .venv/bin/python bench/bench_load.py && .venv/bin/python bench/bench_attach.py'

wheel: $(WHEEL)
$(WHEEL): venv $(SOURCES)
	mkdir -p dist && rm -f dist/socketrace-*.whl
	$(BIN)/pip wheel -q --no-deps -w dist .

# One file that runs with the system python3 wherever python3-bpfcc is installed.
dist: dist/socketrace
dist/socketrace: venv $(SOURCES)
	rm -rf build/zipapp && mkdir -p build/zipapp dist
	# Releases that still run on Python 3.9 (Debian 11), the oldest Python the zipapp may meet:
	# click 8.2 needs 3.10, and a local index may not say so.
	$(BIN)/pip install -q --no-compile --target build/zipapp --python-version 3.9 --only-binary=:all: \
		'click>=8,<8.2' tqdm pyelftools
	cp -rL socketrace build/zipapp/socketrace
	find build/zipapp -name __pycache__ -prune -exec rm -rf {} +
	printf 'import sys\nfrom socketrace.entry import main\nsys.exit(main())\n' > build/zipapp/__main__.py
	$(SYSTEM_PYTHON) -m zipapp build/zipapp -o $@ -p $(SYSTEM_PYTHON)
	@echo "built $@"

clean:
	rm -rf build dist $(VENV) .pytest_cache .ruff_cache
