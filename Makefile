# Two commands do all set-up on a fresh machine (Debian/Ubuntu, Python >= 3.11):
#   make demo   - install what is needed, run the demo competition (embedded mode)
#   make test   - install what is needed (incl. redis-server, PostgreSQL, bubblewrap,
#                 chromium), run ruff and the whole test suite
#   make web    - serve the dashboard on http://127.0.0.1:8000/ (`make demo web`: the
#                 demo, then its run in the dashboard)
# Everything Python goes into .venv; system packages come from apt when missing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test web setup bytecode system-deps-demo system-deps-test lint bench clean mutation

demo: setup system-deps-demo bytecode
	$(VENV)/bin/forge run

# The dashboard on the local run store (artifacts/forge.db, or FORGE_DATABASE_URL); no
# server to start: it reads what `make demo` (or any `forge run`) recorded.
web: setup
	$(VENV)/bin/forge web

# The suite mostly waits (workers, deadlines, redelivery): it runs on $(TEST_WORKERS)
# pytest-xdist workers, a test file per worker at a time (its module-scoped fixtures,
# a cluster, a browser, an emulator, are built once). Not --dist loadgroup: pytest 9.2
# derives node ids, so xdist 3.8 cannot tag them with their group.
TEST_WORKERS ?= 4

test: setup system-deps-test bytecode
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

setup: $(STAMP)

# Byte-code for the project's own modules, as a wheel install would leave it: an editable
# install compiles nothing, so with PYTHONDONTWRITEBYTECODE set (or a read-only checkout)
# every `forge run` and every worker compiled ~150 modules again (0.2 s of a demo's start).
# Up to date, this is a stat per file.
bytecode: setup
	$(PY) -m compileall -q -j 0 dispatcher worker tests bench > /dev/null

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo runs without these (it says so plainly): install when we can, never fail.
system-deps-demo:
	@.ci/system-deps bubblewrap slirp4netns || echo "note: could not install bubblewrap; local sandboxes run without filesystem isolation"

# The suite needs real redis-server, PostgreSQL (initdb/postgres), bubblewrap, slirp4netns,
# chromium, and iproute2 to build the egress tests' own network: fail loudly.
system-deps-test:
	@.ci/system-deps redis-server postgresql bubblewrap slirp4netns chromium iproute2

# Mutation checks on the core guards (docs/testing.md): minutes, on purpose not in CI.
mutation: setup
	tools/mutation.sh

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
