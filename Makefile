# latprune: `make demo` and `make test` set everything up on a fresh machine.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# torch/torchvision pinned to the builds this project is tested with (they install from local disk here).
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-gpu setup data clean

demo: setup data
	$(VENV)/bin/latprune demo

# Two workers on one thread each (tests/conftest.py), each test file on one worker (its module fixtures
# built once): the suite's two slowest files (the README quickstart, the ort-cpu end-to-end) run side by side.
test: setup data
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

test-gpu: setup data
	$(VENV)/bin/pytest -q -m "gpu or tensorrt"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian where apt is usable; otherwise latprune falls back to
# scikit-learn's digits and says so.
data:
	@if [ -f $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "warning: could not install dataset-fashion-mnist; tests and demo use scikit-learn digits"; \
	else echo "warning: Fashion-MNIST absent and apt unusable; tests and demo use scikit-learn digits"; fi

clean:
	rm -rf $(VENV) runs .pytest_cache
