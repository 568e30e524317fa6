"""The post beside the course: failure counts, the one trainable share, loss-curve facts, LLM.int8 and NF4
rounding, and the figures' colours and labels, on hand-made inputs and the smoke model."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from lora_course import CourseError, memory, plots
from lora_course import evaluate as ev
from lora_course.config import RunConfig
from lora_course.lora import attach_lora, count_lora_parameters, parameter_report, trainable_percent
from lora_course.model import load_model, meta_model
from lora_course.precision import CPU_FP32
from lora_course.presets import PROFILES, get_experiment
from lora_course.results import (
    EvalResult,
    Evaluation,
    Run,
    TrainResult,
    beside_post,
    course_measures,
    early_drop_share,
    largest_gap,
    loss_moves,
)
from lora_course.settings import ALL_LINEAR, LLM_INT8_THRESHOLD

# --------------------------------------------------------------------------- failure modes
MOUSE = "Corelogic Smooth Mouse"
CATALOGUE = ["Ventora K2", "Maru Pour Kettle", MOUSE]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a b c a b c a b c", True),  # a 3-word span three times
        ("The mouse glides. The mouse glides. The mouse glides.", True),
        ("go go go go go go", True),  # one word six times
        ("very very very nice", False),  # one word three times is emphasis, not a loop
        ("The mouse is light and the mouse is light and the mouse is light", False),  # two full spans only
        ("A smooth optical mouse that glides on any desk.", False),
        ("", False),
    ],
)
def test_loops(text, expected):
    assert ev.loops(text) is expected


@pytest.mark.parametrize(
    "text, names",
    [
        ("The Ventora K2 is a kettle. It pours well.", ["Ventora K2"]),
        ("Borosilicate glass forms the body of the Ventora K2.", ["Ventora K2"]),  # from the catalogue
        ("Temperature is chosen on a dial.", []),  # one plain capitalised word heads any sentence
        ("A mouse. The SmartGlide has six buttons.", ["SmartGlide"]),  # an inner capital makes a name
        ("The Corelogic Smooth Mouse is light.", [MOUSE]),
        ("It is light. Each Button has a spring.", []),  # "Each" is no part of a name
    ],
)
def test_named_products(text, names):
    assert ev.named_products(text, CATALOGUE) == names


def test_renamed_product_is_a_name_sharing_no_word_with_the_prompts():
    assert ev.renamed_product("The Ventora K2 is a mouse.", MOUSE, CATALOGUE)
    assert not ev.renamed_product("The Smooth Mouse is light.", MOUSE, CATALOGUE)  # shares "Smooth", "Mouse"
    assert not ev.renamed_product("The Corelogic Smooth Mouse is light.", MOUSE, CATALOGUE)
    assert ev.renamed_product("Hold the Maru Pour Kettle.", MOUSE, CATALOGUE)


def test_failure_counts_on_hand_made_answers():
    texts = [
        "A smooth mouse. A smooth mouse.",  # repeats a sentence
        "grip grip grip grip grip grip",  # loops
        "The Ventora K2 is a mouse. It is smooth. It is smooth.",  # renamed and repeats
        "A light mouse with two buttons.",  # clean
    ]
    counts = ev.failure_counts(texts, [MOUSE] * 4, CATALOGUE)
    assert counts.to_dict() == {"repeats a sentence": 2, "loops": 1, "renames the product": 1}
    with pytest.raises(CourseError, match="product names"):
        ev.failure_counts(texts, [MOUSE], CATALOGUE)


def _evaluation(name: str, texts: list[str], losses: list[float], stopped: list[bool]) -> Evaluation:
    rows = pd.DataFrame({"text": texts, "raw": texts, "stopped": stopped,
                         "has_repeated_sentence": [ev.has_repeated_sentence(t) for t in texts]})
    heldout = EvalResult(rows=rows, summary=pd.DataFrame())
    prompts = [{"product": "Hoover Lightspeed", "text": "The Dyson Cyclone V10 is a vacuum.", "raw": "",
                "stopped": True, "new_tokens": 9}]
    loss = {"loss": sum(losses) / len(losses), "row_losses": losses}
    return Evaluation(name, "full", loss, heldout, prompts)


def test_failure_table_counts_held_out_rows_and_the_posts_prompts():
    e = _evaluation("qlora-r8-qv", ["A mouse. A mouse.", "The Ventora K2 is a mouse."], [2.0, 3.0], [True, False])
    table = ev.failure_table({"qlora-r8-qv": e}, [MOUSE, MOUSE], CATALOGUE)
    # the prompt's answer names a Dyson for a Hoover: renamed
    assert table.loc["qlora-r8-qv"].to_dict() == {"repeats a sentence": 1, "loops": 0, "renames the product": 2,
                                                 "responses": 3}
    assert ev.describe_failures(table.loc["qlora-r8-qv"]) == (
        "of 3 answers, 1 repeat a sentence, 0 loop, 2 name another product")
    with pytest.raises(CourseError, match="same held-out split"):
        ev.failure_table({"qlora-r8-qv": e}, [MOUSE], CATALOGUE)


def test_beside_post_puts_the_posts_figures_next_to_the_runs(tmp_path):
    config = RunConfig.create("qlora-r8-all", PROFILES["smoke"], seed=42, results_dir=tmp_path)
    result = TrainResult(losses=[{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}], eval_losses=[],
                         wall_time_s=90.0, step_seconds=[45.0, 45.0], peak_memory_mib=100.0, memory_kind="rss",
                         tokens_trained=1000, steps=2)
    run = Run(config, result, {"trainable": 1234, "percent": 1.0}, {}, tmp_path)
    e = _evaluation("qlora-r8-all", ["A mouse. A mouse.", "A light mouse."], [2.0, 3.0], [True, False])
    assert course_measures(run, e) == {"trainable parameters": 1234, "training minutes": 1.5, "held-out loss": 2.5,
                                       "stop rate": 0.5, "repetition rate": 0.5}
    table = beside_post(run, e, "of 3 answers, ...", here="this page")
    assert table.loc["model"].tolist() == ["openlm-research/open_llama_3b_v2", PROFILES["smoke"].model_spec.shown_name]
    assert table.loc["trainable parameters"].tolist() == ["12,994,560", "1,234"]
    assert table.loc["training minutes", "this page"] == "1.5 (2 steps)"
    assert table.loc["training minutes", "the post"].startswith("about 15.5")
    assert table.loc["stop rate", "this page"] == "50%"
    assert table.loc["verdict / what the outputs show", "the post"] == "the best: longest, logically sound text"


# --------------------------------------------------------------------------- one trainable share
def test_trainable_share_is_pefts_and_one_number_on_the_smoke_model():
    # OpenLLaMA-3b-v2, r = 8 on q/v: PEFT's share is of base and adapter together.
    assert round(trainable_percent(2_662_400, 3_426_473_600 + 2_662_400), 4) == 0.0776
    exp = get_experiment("qlora-r8-all")
    counted = count_lora_parameters(meta_model("smoke-llama"), 8, ALL_LINEAR)
    trained = parameter_report(attach_lora(load_model("smoke-llama", "nf4"), exp, CPU_FP32))
    assert (trained.trainable, trained.total) == (counted.trainable, counted.total)
    assert trained.percent == counted.percent == 100 * counted.trainable / counted.total
    base = counted.total - counted.trainable
    assert counted.percent < 100 * counted.trainable / base  # the other definition, which chapter 3 used to show
    with pytest.raises(CourseError, match="trainable share"):
        trainable_percent(5, 4)


# --------------------------------------------------------------------------- loss curves
EVEN = [{"step": i, "loss": 4 - 0.1 * i} for i in range(1, 33)]
FAST = [{"step": i, "loss": max(1.0, 4 - 1.0 * i)} for i in range(1, 33)]
NOISY = [{"step": i, "loss": v} for i, v in enumerate([3.0, 3.1, 3.2, 3.1, 3.3], start=1)]


def test_loss_curve_facts():
    assert early_drop_share(EVEN) == pytest.approx(0.7 / 2.75)  # steps 7-9 against the last eight
    assert early_drop_share(FAST) == 1.0
    assert math.isnan(early_drop_share(NOISY))  # it rose: there is no fall to share
    assert loss_moves(NOISY) == {"rose": 3, "fell": 1, "steps": 4}
    assert largest_gap(EVEN, FAST) == pytest.approx(2.7)
    with pytest.raises(CourseError, match="two logged losses"):
        loss_moves(NOISY[:1])


# --------------------------------------------------------------------------- LLM.int8 and NF4
def test_int8_rows_and_nf4_blocks_round_as_described():
    w = torch.tensor([[1.0, -0.5, 0.25, 0.0], [100.0, 1.0, -1.0, 0.3]])
    rows = memory.int8_round_rows(w)
    assert torch.equal(rows[0], torch.round(w[0] * 127) / 127)  # row absmax 1: steps of 1/127
    # beside 100 in one row a step is 100/127: 1.0 becomes one step, 0.3 (under half a step) becomes 0
    assert rows[1, 1].item() == pytest.approx(100 / 127) and rows[1, 3].item() == 0.0
    torch.manual_seed(0)
    g = torch.randn(8, 64)
    assert (memory.int8_round_rows(g) - g).abs().max() <= g.abs().amax(dim=1).max() / 254 + 1e-6
    nf4 = memory.nf4_round(g)
    assert torch.allclose(nf4[0], memory.nf4_round_block(g[0])[0])  # one row of 64 is one block
    assert (nf4 - g).pow(2).mean() > (memory.int8_round_rows(g) - g).pow(2).mean()
    with pytest.raises(CourseError, match="blocks of 64"):
        memory.nf4_round(torch.ones(10))


def test_a_small_update_is_lost_in_the_grid_and_kept_apart():
    m = memory.nf4_merge(0.12, 0.021, 1e-3)
    assert m["merged"] == m["stored"] and m["kept"] == pytest.approx(m["stored"] + 1e-3)
    assert m["gap"] == pytest.approx(0.12 * 0.0813, rel=0.01)  # NF4's levels near 0.16 lie about 0.08 apart
    big = memory.nf4_merge(0.12, 0.021, 2 * m["gap"])  # a large update jumps to another level
    assert big["merged"] > big["stored"] and big["merged"] != pytest.approx(big["kept"])


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(4, 8)
        self.proj = torch.nn.Linear(8, 8)
        with torch.no_grad():
            self.embed.weight.fill_(0.5)
            self.embed.weight[:, 3] = 9.0  # one feature column far above the threshold

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, attention_mask=None):
        return self.proj(self.embed(input_ids))


def test_outlier_columns_finds_the_feature_above_the_threshold():
    tok = lambda text, **kw: {"input_ids": torch.tensor([[0, 1, 2]])}  # noqa: E731
    table = memory.outlier_columns(_Toy(), tok, ["one text"])
    assert table.loc["proj"].to_dict() == {"columns": 8, "outlier columns": 1, "largest |x|": 9.0, "share": 0.125}
    assert memory.outlier_columns(_Toy(), tok, ["x"], threshold=10.0).loc["proj", "outlier columns"] == 0


def test_the_8bit_config_names_the_threshold():
    from lora_course.model import bnb_config

    assert bnb_config("int8", CPU_FP32).llm_int8_threshold == LLM_INT8_THRESHOLD == 6.0


# --------------------------------------------------------------------------- figures
def test_one_colour_per_family_and_readable_labels():
    assert plots.colour("q, v") == plots.colour("qlora-r8-qv") == plots.colour("qlora-r8-qv-seed43")
    assert plots.colour("all linear") == plots.colour("qlora-r8-all") != plots.colour("q, v")
    assert plots.colour("lr 0.001") is None
    assert plots.label("rouge_l") == "ROUGE-L" and plots.label("unknown_metric") == "unknown_metric"


def test_runs_of_one_size_are_drawn_apart():
    fig = plots.params_vs_quality({"all linear": [(1000, 2.0, "NF4"), (1000, 2.1, "8-bit")],
                                   "q, v": [(100, 2.5), (200, 2.4)]}, metric="response_loss")
    ax = fig.axes[0]
    xs = sorted(x for x, _ in ax.collections[0].get_offsets())
    assert xs[0] < 1000 < xs[1]  # spread, not one vertical line
    assert ax.get_ylabel() == "held-out loss (nats per token)"
    assert [t.get_text() for t in ax.texts] == ["NF4", "8-bit"]


def test_concept_figures_draw(tmp_path):
    plots.lora_bypass(64, 64, 8, 8, path=tmp_path / "bypass.png")
    plots.update_against_grid(0.12, 0.021, 1e-3, path=tmp_path / "grid.png")
    assert (tmp_path / "bypass.png").stat().st_size > 1000 and (tmp_path / "grid.png").stat().st_size > 1000
    with pytest.raises(CourseError, match="must lie between"):
        plots.lora_bypass(64, 64, 0)
