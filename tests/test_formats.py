"""Data shapes: Alpaca rows, prompt/completion pairs and mapped tables go through the post's cleaning and split."""

import json

import pandas as pd
import pytest

from lora_course.cli import main
from lora_course.data import PROMPT_TEMPLATE, RESPONSE_SUFFIX, load_table, prepare_data
from lora_course.errors import CourseError
from lora_course.formats import parse_columns
from lora_course.settings import DataSettings


def _alpaca_rows(n=40):
    """The course's sample as Alpaca rows; every fourth row carries its category as the input."""
    sample = load_table("sample").head(n)
    return pd.DataFrame({
        "instruction": "Describe the product " + sample["product"],
        "input": [c if i % 4 == 0 else "" for i, c in enumerate(sample["category"])],
        "output": sample["description"],
    })


def test_alpaca_rows_get_the_template_with_and_without_input(tmp_path):
    rows = _alpaca_rows()
    rows.loc[1, "output"] = "  "  # an empty answer is dropped and counted, an empty input is not
    path = tmp_path / "alpaca.jsonl"
    rows.to_json(path, orient="records", lines=True)
    data = prepare_data(DataSettings(source=str(path), test_size=4))
    assert (data.report.rows_read, data.report.empty_dropped) == (40, 1)
    assert (data.report.train_rows, data.report.test_rows) == (35, 4)
    every = pd.concat([data.train.to_pandas(), data.test.to_pandas()])
    plain = every[every["input"] == ""].iloc[0]
    assert plain["prompt"] == PROMPT_TEMPLATE.format(instruction=plain["instruction"])
    with_input = every[every["input"] != ""].iloc[0]
    assert f"### Input:\n\n{with_input['input']}\n\n### Response:\n" in with_input["prompt"]
    assert with_input["text"] == with_input["prompt"] + with_input["output"] + RESPONSE_SUFFIX
    assert with_input["description"] == with_input["output"]  # the held-out evaluation's reference


def test_a_column_mapping_and_prompt_completion_pairs():
    qa = pd.DataFrame({"question": [f"q{i}" for i in range(10)], "answer": [f"a{i}" for i in range(10)]})
    settings = DataSettings(test_size=2, columns=parse_columns("instruction=question,response=answer"))
    data = prepare_data(settings, table=qa)
    row = data.train[0]
    assert row["prompt"] == PROMPT_TEMPLATE.format(instruction=row["instruction"])
    assert row["response"] == "a" + row["instruction"][1:] + RESPONSE_SUFFIX
    pairs = pd.DataFrame({"prompt": ["Say hi:", "Say bye:", "Count:"], "completion": [" hi", " bye", " 1 2 3"]})
    data = prepare_data(DataSettings(test_size=1), table=pairs)
    texts = sorted(list(data.train["text"]) + list(data.test["text"]))
    # Cleaning strips every field, as for the post's rows: the completion's leading space goes.
    assert texts == sorted(p + c.strip() + RESPONSE_SUFFIX for p, c in zip(pairs["prompt"], pairs["completion"]))


def test_the_product_shape_stays_the_default():
    data = prepare_data(DataSettings(n_rows=20, test_size=2))
    assert data.train[0]["prompt"].startswith(PROMPT_TEMPLATE.split("{")[0])
    assert "Create a detailed description for the following product" in data.train[0]["prompt"]


def test_a_mapping_naming_a_missing_column_is_one_sentence():
    qa = pd.DataFrame({"question": ["q"], "answer": ["a"]})
    with pytest.raises(CourseError, match=r"maps response=reply, but .* has no such column: its columns are question, answer"):
        prepare_data(DataSettings(columns={"instruction": "question", "response": "reply"}), table=qa)
    with pytest.raises(CourseError, match="not ROLE=COLUMN"):
        parse_columns("instruction")


def test_cli_mapping_error_writes_nothing(tmp_path, capsys):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(10)))
    results = tmp_path / "results"
    code = main(["train", "--data", str(path), "--columns", "instruction=question,response=reply", "--experiment",
                 "qlora-r8-qv", "--profile", "smoke", "--results", str(results), "--max-steps", "1"])
    assert code == 2 and not results.exists()
    assert "has no such column" in capsys.readouterr().err
