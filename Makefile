# swepost: `make demo` installs everything and runs the quickstart recipe; `make test` runs what CI runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a GPU machine install your own torch first and run `make install TORCH=`.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRL_EXPERIMENTAL_SILENCE ?= 1

.PHONY: install test demo bench lint clean base-image

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(PY) -m pip install -q "$(TORCH)")
	$(PY) -m pip install -q -e ".[dev,dense,ray]"
	touch $@

# Two workers: most tests wait on docker, subprocesses or servers, so two run in about the time of one
# (tests/conftest.py keeps the ones that must not overlap in one group).
PYTEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

# The sandbox base image (debootstrap + docker import, no registry); a no-op when it already exists.
base-image: install
	$(PY) -c 'from swepost.sandbox.images import build_base_image; build_base_image()'

demo: install
	@# with a docker engine, sandboxes need the base image (built once, ~1 min); without one, bubblewrap is used
	$(PY) -c 'from swepost.sandbox.docker import docker_available as up; from swepost.sandbox.images import build_base_image as b; up() and b()'
	$(VENV)/bin/swepost run recipes/quickstart.yaml
	$(VENV)/bin/swepost artifacts lineage quickstart-eval
	$(VENV)/bin/swepost tasks ls quickstart-validated

bench: install
	$(PY) bench/cli.py --out bench/results/cli.json
	$(PY) bench/sandbox.py --out bench/results/sandbox.json
	$(PY) bench/grading.py --baseline-ref 9fa9fd9 --out bench/results/grading.json
	$(PY) bench/rollout.py --out bench/results/rollout.json
	$(PY) bench/rl_rollout.py --out bench/results/rl_rollout.json
	$(PY) bench/sft.py --out bench/results/sft.json
	$(PY) bench/judge.py --out bench/results/judge.json
	$(PY) bench/retrieval.py --out bench/results/retrieval.json
	$(PY) bench/viewer.py --out bench/results/viewer.json
	$(PY) bench/env_server.py --out bench/results/env_server.json
	$(PY) bench/mine.py --out bench/results/mine.json

lint: install
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache bench/results
