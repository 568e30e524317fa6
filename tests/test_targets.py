"""Target sets by meaning on tiny random models of seven architectures: names, counts, errors."""

import pytest

from lora_course.errors import CourseError
from lora_course.lora import count_lora_parameters
from lora_course.targets import TARGET_SETS, TINY_ARCHITECTURES, resolve_target_set, resolve_targets, tiny_model

R = 8
LAYERS = 2
HEAD = (64, 512)  # hidden 64 -> vocabulary 512
# (in, out) of each matrix per layer, worked out by hand from the tiny widths: hidden 64, MLP 128,
# 4 heads of 16; 2 key/value heads (2 x 16 = 32 wide) where the architecture groups them.
QKV = {"q": (64, 64), "k": (64, 32), "v": (64, 32)}
LLAMA = dict(QKV, o=(64, 64), mlp=[(64, 128), (64, 128), (128, 64)])  # gate, up, down
SHAPES = {
    "llama": LLAMA,
    "qwen2": LLAMA,
    "mistral": LLAMA,
    "gemma": LLAMA,  # head_dim 16 set explicitly: Gemma's default is 256
    # Phi-3 (4 key/value heads): qkv 64 -> 3 x 64; gate_up 64 -> 2 x 128.
    "phi3": dict(qkv=(64, 192), o=(64, 64), mlp=[(64, 256), (128, 64)]),
    "gpt_neox": dict(qkv=(64, 192), o=(64, 64), mlp=[(64, 128), (128, 64)]),
    "gpt2": dict(qkv=(64, 192), o=(64, 64), mlp=[(64, 128), (128, 64)]),
}


def formula(kind: str, target_set: str) -> int:
    """r * (in + out) per adapted matrix, per layer x 2 layers, plus the head once for all-linear."""
    s = SHAPES[kind]
    attention = [s["qkv"], s["o"]] if "qkv" in s else [s["q"], s["k"], s["v"], s["o"]]
    per_layer = {
        "attention-qv": [s.get("q"), s.get("v")],
        "attention": attention,
        "mlp": s["mlp"],
        "all-linear": attention + s["mlp"],
        "all-linear-no-head": attention + s["mlp"],
    }[target_set]
    total = LAYERS * sum(R * (i + o) for i, o in per_layer)
    return total + (R * sum(HEAD) if target_set == "all-linear" else 0)


FUSED = {"phi3": "qkv_proj", "gpt_neox": "query_key_value", "gpt2": "c_attn"}
CASES = [(k, t) for k in TINY_ARCHITECTURES for t in TARGET_SETS if not (k in FUSED and t == "attention-qv")]


@pytest.fixture(scope="module")
def tiny_models():
    return {k: tiny_model(k, device="cpu") for k in TINY_ARCHITECTURES}


@pytest.mark.parametrize("kind,target_set", CASES)
def test_lora_attaches_with_the_formula_count(tiny_models, kind, target_set):
    from peft import LoraConfig, get_peft_model

    model = tiny_models[kind]
    targets = resolve_target_set(model, target_set)
    expected = formula(kind, target_set)
    # Shapes alone (meta device) give the same count as the formula.
    assert count_lora_parameters(tiny_model(kind), R, targets).trainable == expected
    peft_model = get_peft_model(tiny_model(kind, device="cpu"), LoraConfig(r=R, target_modules=targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == expected
    # Every matrix the set names got a LoRA pair, and nothing else did.
    adapted = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and R in getattr(m, "r", {}).values()}
    n_per_layer = {"attention-qv": 2, "mlp": len(SHAPES[kind]["mlp"])}.get(target_set)
    if n_per_layer is not None:
        assert len(adapted) == LAYERS * n_per_layer


def test_fused_architectures_have_no_qv_only_set(tiny_models):
    for kind, fused in FUSED.items():
        with pytest.raises(CourseError, match=f"not available.*{fused}.*'attention'"):
            resolve_target_set(tiny_models[kind], "attention-qv")
        # The post's explicit pair means the same thing there, and says so.
        with pytest.raises(CourseError, match="not available"):
            resolve_targets(tiny_models[kind], ("q_proj", "v_proj"))
        # The whole fused matrix is still there by name.
        assert resolve_targets(tiny_models[kind], [fused]) == [fused]


def test_resolved_names_per_architecture(tiny_models):
    assert resolve_target_set(tiny_models["qwen2"], "attention-qv") == ["q_proj", "v_proj"]
    assert resolve_target_set(tiny_models["phi3"], "attention") == ["o_proj", "qkv_proj"]
    assert resolve_target_set(tiny_models["gpt_neox"], "mlp") == ["dense_4h_to_h", "dense_h_to_4h"]
    # GPT-2 has a c_proj in attention and in the MLP: the sets tell them apart by their parent.
    assert resolve_target_set(tiny_models["gpt2"], "attention") == ["attn.c_proj", "c_attn"]
    assert resolve_target_set(tiny_models["gpt2"], "mlp") == ["c_fc", "mlp.c_proj"]
    assert "lm_head" in resolve_target_set(tiny_models["gemma"], "all-linear")
    assert "lm_head" not in resolve_target_set(tiny_models["gemma"], "all-linear-no-head")


def test_missing_targets_list_the_linear_layers(tiny_models):
    with pytest.raises(CourseError, match=r"w_q not found.*c_attn, c_fc, c_proj, lm_head"):
        resolve_targets(tiny_models["gpt2"], ["w_q"])
    with pytest.raises(CourseError, match="Unknown target set 'attn'"):
        resolve_target_set(tiny_models["llama"], "attn")
