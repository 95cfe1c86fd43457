# The two set-up commands: `make demo` and `make test`. Both create the virtual environment when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel on this kind of machine; on a GPU machine: make TORCH_SPEC="torch>=2.1" demo
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= output/demo
PYTEST_ARGS ?=

.PHONY: demo test install clean-demo

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m mseg_semantic.tool.train --config config/train/demo.yaml output_dir=$(DEMO_DIR)
	$(PY) -m mseg_semantic.tool.test --config config/test/demo.yaml model_path=$(DEMO_DIR)/model_final.pth save_folder=$(DEMO_DIR)/zero_shot
	@echo "demo outputs: $(DEMO_DIR) (checkpoints, tensorboard, train.log, zero_shot/)"

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
