# Mayfly: set-up, run and test. Needs root: `sudo make run`, `sudo make test`.
# Every step is idempotent: a second `make setup` changes nothing.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
RECORDS ?= /var/log/mayfly/records.msgpack
PYTEST  ?= -ra

.PHONY: setup system-packages bench-packages venv host run test bench clean

setup: system-packages venv host

# Debian/Ubuntu/Fedora packages: BCC, runc, headers, compilers (names in sensor/system/distro.py).
system-packages:
	@$(PYTHON) sensor/system/distro.py install

# What the benchmarks add (bpftrace, redis); `make test` runs their quick mode.
bench-packages:
	@$(PYTHON) sensor/system/distro.py install-bench

# The venv, with the system's bcc package alone linked in: not the whole
# dist-packages, whose cffi and others clash with pip's.
venv: $(BIN)/mayfly
	@bcc_dir=$$(/usr/bin/python3 -c 'import bcc, os; print(os.path.dirname(bcc.__file__))') \
	  || { echo "the system python cannot import bcc: install $$($(PYTHON) sensor/system/distro.py bcc)" >&2; exit 1; }; \
	site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	ln -sfn "$$bcc_dir" "$$site/bcc"

$(BIN)/mayfly: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

# Mount tracefs/securityfs, link a fallback kernel header tree, report the host.
host: venv
	$(BIN)/mayfly doctor --fix

run: setup
	$(BIN)/mayfly run --emit-events=execve,execveat --output stdout --output file:$(RECORDS)

test: setup bench-packages
	$(BIN)/python -m pytest $(PYTEST) tests/unit tests/kernel tests/e2e

# QUICK=1: a short smoke run of every benchmark.
bench: setup bench-packages
	$(BIN)/python benchmarks/ringbuf.py $(if $(QUICK),--quick)
	$(BIN)/python benchmarks/engine.py $(if $(QUICK),--quick)
	$(BIN)/python benchmarks/endtoend.py $(if $(QUICK),--quick)
	$(BIN)/python benchmarks/needles.py $(if $(QUICK),--quick)
	$(BIN)/python benchmarks/memory.py $(if $(QUICK),--quick)
	$(BIN)/python benchmarks/capture.py $(if $(QUICK),--quick)
	$(BIN)/python benchmarks/response.py $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) build *.egg-info
