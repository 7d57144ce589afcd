# make demo        : set up .venv and pretrain DINO on Fashion-MNIST (about 10 minutes on 2 CPU cores)
# make demo-simclr : the same for SimCLR
# make demo-byol   : the same for BYOL
# make demo-vicreg : the same for VICReg
# make demo-ijepa  : the same for I-JEPA
# make demo-hjepa  : the same for H-JEPA
# make demo-multispectral : SimCLR on 8-band images generated from Fashion-MNIST
# make demo-finetune : fine-tune the DINO demo backbone on Fashion-MNIST (runs make demo's training first if needed)
# make test        : set up .venv, check the code with ruff (make lint) and run the test suite
# make lint        : ruff check + ruff format --check (make format rewrites)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup lint format demo demo-finetune demo-simclr demo-byol demo-vicreg demo-ijepa demo-hjepa demo-multispectral test fashion-mnist bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Debian/Ubuntu: the IDX files of Fashion-MNIST from the distribution; elsewhere the demo reads the Hub copy.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) \
			|| echo "dataset-fashion-mnist could not be installed: falling back to the Hub copy"; \
	fi

demo: setup fashion-mnist
	$(PY) recipes/train_dino.py --config recipes/dino_fashion_mnist_demo.yaml

demo-simclr: setup fashion-mnist
	$(PY) recipes/train_simclr.py --config recipes/simclr_fashion_mnist_demo.yaml

demo-byol: setup fashion-mnist
	$(PY) recipes/train_byol.py --config recipes/byol_fashion_mnist_demo.yaml

demo-vicreg: setup fashion-mnist
	$(PY) recipes/train_vicreg.py --config recipes/vicreg_fashion_mnist_demo.yaml

demo-ijepa: setup fashion-mnist
	$(PY) recipes/train_ijepa.py --config recipes/ijepa_fashion_mnist_demo.yaml

demo-hjepa: setup fashion-mnist
	$(PY) recipes/train_hjepa.py --config recipes/hjepa_fashion_mnist_demo.yaml

demo-multispectral: setup fashion-mnist
	$(PY) recipes/train_simclr.py --config recipes/simclr_multispectral_demo.yaml

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# one test process per core (pytest-xdist), a test file per process; one PyTorch thread each, so that processes
# sharing the cores do not make each other's OpenMP threads spin
test: setup lint
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest tests -n auto --dist loadfile

demo-finetune: setup fashion-mnist
	@[ -f outputs/dino-fashion-mnist-demo/backbone/model.safetensors ] || $(PY) recipes/train_dino.py --config recipes/dino_fashion_mnist_demo.yaml
	$(PY) recipes/finetune_classification.py --config recipes/finetune_fashion_mnist.yaml

bench: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_data.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) outputs
