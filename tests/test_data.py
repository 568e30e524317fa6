"""The bundled sample dataset, the three loaders, validation and the data card."""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd
import pytest

from lora_course import CourseError
from lora_course.data import (
    BLOG_PROMPTS,
    COLUMNS,
    HUB_DATASET_ID,
    RESPONSE_SUFFIX,
    SAMPLE_PATH,
    clean_table,
    data_card,
    format_rows,
    load_table,
    prepare_data,
)
from lora_course.settings import DataSettings


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_table("sample")


# --------------------------------------------------------------------------- the sample


def test_sample_schema_and_size(sample):
    assert list(sample.columns) == list(COLUMNS)
    assert len(sample) >= 300
    assert sample["category"].nunique() >= 40
    assert sample["product"].str.lower().is_unique
    clean, report = clean_table(sample)
    assert len(clean) == len(sample) and report.empty_dropped == 0 and report.duplicates == 0


def test_sample_descriptions_are_40_to_110_words(sample):
    words = sample["description"].str.split().map(len)
    assert words.min() >= 40 and words.max() <= 110


def test_sample_has_no_repeated_template(sample):
    """No 8-word sequence may recur in more than 5% of the rows."""
    rows_with = Counter()
    for text in sample["description"]:
        w = re.findall(r"[a-z0-9']+", text.lower())
        rows_with.update({tuple(w[i : i + 8]) for i in range(len(w) - 7)})
    gram, count = rows_with.most_common(1)[0]
    assert count <= 0.05 * len(sample), f"'{' '.join(gram)}' appears in {count} rows"


def test_blog_prompts_stay_unseen(sample):
    everything = " ".join(sample["product"] + " " + sample["description"]).lower()
    for product, _ in BLOG_PROMPTS:
        assert product.lower() not in everything
        for word in product.split():
            if word.lower() not in {"smooth", "mouse"}:  # ordinary words may appear
                assert word.lower() not in everything, word


def test_sample_is_ascii_text():
    SAMPLE_PATH.read_bytes().decode("ascii")


# --------------------------------------------------------------------------- loaders


def test_csv_jsonl_and_parquet_give_identical_training_text(tmp_path, sample):
    rows = sample.head(12)
    rows.to_csv(tmp_path / "d.csv", index=False)
    rows.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    rows.to_parquet(tmp_path / "d.parquet", index=False)
    texts = [format_rows(load_table(tmp_path / f"d.{ext}"))["text"].tolist() for ext in ("csv", "jsonl", "parquet")]
    assert texts[0] == texts[1] == texts[2] == format_rows(rows)["text"].tolist()
    assert texts[0][0].endswith(rows["description"].iloc[0] + RESPONSE_SUFFIX)


def test_extra_columns_such_as_text_are_ignored(tmp_path, sample):
    rows = sample.head(3).assign(text="precomputed by the hub dataset")
    rows.to_parquet(tmp_path / "hub-shaped.parquet", index=False)
    clean, _ = clean_table(load_table(tmp_path / "hub-shaped.parquet"))
    assert list(clean.columns) == list(COLUMNS)


def test_hub_id_while_offline_says_what_to_do(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CourseError, match="this machine is offline.*pass a local CSV/JSONL/parquet file.*bundled sample"):
        load_table(HUB_DATASET_ID)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CourseError, match="does not exist"):
        load_table(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- validation


def _table(rows):
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_missing_columns_are_named():
    with pytest.raises(CourseError, match=r"lacks the column\(s\) description"):
        clean_table(pd.DataFrame({"product": ["a"], "category": ["b"]}))


def test_empty_and_whitespace_rows_are_dropped_and_counted():
    df = _table([["Lamp", "Desk Lamp", "A lamp."], ["Kettle", " ", "A kettle."], ["Fan", "Fan", "\t\n"], ["Mug", "Cup", None]])
    clean, report = clean_table(df)
    assert clean["product"].tolist() == ["Lamp"]
    assert report.empty_dropped == 3
    assert "3 row(s) with an empty or whitespace-only field dropped" in str(report)


def test_duplicates_are_reported():
    df = _table([["Lamp", "Desk Lamp", "A lamp."]] * 3 + [["Fan", "Fan", "A fan."]])
    clean, report = clean_table(df)
    assert report.duplicates == 2 and len(clean) == 2
    kept, report2 = clean_table(df, drop_duplicates=False)
    assert report2.duplicates == 2 and len(kept) == 4
    assert "2 duplicated row(s) found and kept" in str(report2)


@pytest.mark.parametrize("action, expected_rows", [("truncate", 40), ("drop", 39)])
def test_overlong_rows_are_counted_then_truncated_or_dropped(action, expected_rows, smoke_tokenizer):
    rows = [[f"Item {i}", "Desk Lamp", "A small lamp."] for i in range(39)]
    rows.append(["Huge", "Desk Lamp", "word " * 400])
    settings = DataSettings(test_size=0.25, overlong=action)
    data = prepare_data(settings, smoke_tokenizer, max_length=128, table=_table(rows))
    assert data.report.overlong == 1
    assert data.report.rows_sampled == expected_rows
    assert data.report.train_rows + data.report.test_rows == expected_rows


# --------------------------------------------------------------------------- pipeline


def test_blog_sampling_and_split_are_seeded(sample):
    settings = DataSettings(n_rows=200)
    a = prepare_data(settings, table=sample)
    b = prepare_data(settings, table=sample)
    assert a.train["text"] == b.train["text"] and a.test["text"] == b.test["text"]
    # 95/5 of 200 rows: 10 test rows.
    assert (len(a.train), len(a.test)) == (190, 10)
    # The sample is pandas' own seeded sample, as in the blog.
    expected = set(sample.sample(n=200, random_state=42)["product"])
    assert set(a.train["product"]) | set(a.test["product"]) == expected


def test_test_size_as_a_row_count_and_a_training_slice(sample):
    data = prepare_data(DataSettings(test_size=60, train_rows=16), table=sample)
    assert (len(data.test), len(data.train)) == (60, 16)
    full = prepare_data(DataSettings(test_size=60), table=sample)
    assert data.test["text"] == full.test["text"]  # the slice leaves the held-out rows alone
    assert data.train["text"] == full.train["text"][:16]
    with pytest.raises(CourseError, match="A test split of 400 rows needs more than the"):
        prepare_data(DataSettings(test_size=400), table=sample)


def test_asking_for_more_rows_than_exist(sample):
    with pytest.raises(CourseError, match=f"Asked for 100000 rows but the dataset from sample has {len(sample)} usable rows"):
        prepare_data(DataSettings(n_rows=100_000), table=sample)


def test_data_card_counts(sample, smoke_tokenizer):
    card = data_card(sample, smoke_tokenizer)
    assert card.rows == len(sample)
    assert card.categories == sample["category"].nunique()
    counts = sample["category"].value_counts()
    assert card.top_categories == {str(k): int(v) for k, v in counts.head(10).items()}
    assert len(card.description_words) == len(card.text_tokens) == card.rows
    # The training text is the description plus the template, so it is always longer.
    assert all(t > d for t, d in zip(card.text_tokens, card.description_tokens))
    summary = card.summary()
    assert summary.loc["description (words)", "min"] == sample["description"].str.split().map(len).min()
    # The share over a limit, counted independently: texts + EOS longer than 128 tokens.
    texts = format_rows(sample)["text"].tolist()
    over = sum(len(smoke_tokenizer(t)["input_ids"]) + 1 > 128 for t in texts)
    assert card.share_over(128) == over / len(texts)
    assert card.share_over(10_000) == 0.0 and card.share_over(1) == 1.0
