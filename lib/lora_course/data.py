"""Data: product rows -> Alpaca-format training text, sampled and split as in the blog.

The pipeline, top-down:
    load_table(source)            hub id, local CSV/JSONL/parquet, or the bundled sample
    clean_table(df)               names missing columns, drops and counts empty rows,
                                  reports duplicates
    format_rows(df)               instruction -> Alpaca prompt -> response + "\\n### End"
    prepare_data(settings, tok)   all of the above, then length check, sample, 95/5 split
    held_out(profile, tok)        the held-out rows every run of a profile is scored on
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import CourseError
from .formats import SHAPES, shape_rows
from .settings import DataSettings

COLUMNS = ("product", "category", "description")
HUB_DATASET_ID = "xiyuez/red-dot-design-award-product-description"
REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PATH = REPO_ROOT / "data" / "product-descriptions-sample.jsonl"

INSTRUCTION = "Create a detailed description for the following product: {product}, belonging to category: {category}"
PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n"
    "\n"
    "### Instruction:\n"
    "\n"
    "{instruction}\n"
    "\n"
    "### Response:\n"
)
END_MARKER = "### End"
RESPONSE_SUFFIX = "\n" + END_MARKER

# Unseen products for generation: (product, category). The post shows the first
# two; the third comes from its companion code, and its category, "Television",
# is this course's choice.
BLOG_PROMPTS: tuple[tuple[str, str], ...] = (
    ("Corelogic Smooth Mouse", "Optical Mouse"),
    ("Hoover Lightspeed", "Cordless Vacuum Cleaner"),
    ("Flattronic Cinematron", "Television"),
)


# --------------------------------------------------------------------------- formatting
def build_instruction(product: str, category: str) -> str:
    for what, value in (("product", product), ("category", category)):
        if not str(value).strip():
            raise CourseError(f"The {what} is empty: give a {what} name (e.g. --{what} \"{_EXAMPLE[what]}\").")
    return INSTRUCTION.format(product=product, category=category)


_EXAMPLE = {"product": "Corelogic Smooth Mouse", "category": "Optical Mouse"}


def format_prompt(instruction: str) -> str:
    """The Alpaca prompt, ending with "### Response:" and a newline."""
    return PROMPT_TEMPLATE.format(instruction=instruction)


def product_prompt(product: str, category: str) -> str:
    return format_prompt(build_instruction(product, category))


def qa_prompt(product: str, category: str) -> str:
    """The blog's bare "Q: ... A:" baseline prompt."""
    return f"Q: {build_instruction(product, category)}\nA:"


def format_example(product: str, category: str, description: str) -> dict[str, str]:
    prompt = product_prompt(product, category)
    response = description + RESPONSE_SUFFIX
    return {"prompt": prompt, "response": response, "text": prompt + response}


def format_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Add `instruction`, `prompt`, `response` and `text` columns (a new frame)."""
    out = df.copy()
    out["instruction"] = [build_instruction(p, c) for p, c in zip(out["product"], out["category"])]
    out["prompt"] = out["instruction"].map(format_prompt)
    out["response"] = out["description"] + RESPONSE_SUFFIX
    out["text"] = out["prompt"] + out["response"]
    return out


ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that gives more context. "
    "Write a response that appropriately completes the request.\n"
    "\n"
    "### Instruction:\n"
    "\n"
    "{instruction}\n"
    "\n"
    "### Input:\n"
    "\n"
    "{input}\n"
    "\n"
    "### Response:\n"
)


def format_shaped(df: pd.DataFrame, shape: str) -> pd.DataFrame:
    """Add `prompt`, `response`, `text` and `description` (the reference answer) to a cleaned frame of `shape`."""
    if shape == "product":
        return format_rows(df)
    out = df.copy()
    if shape == "alpaca":
        out["prompt"] = [format_prompt(i) if not x else ALPACA_WITH_INPUT.format(instruction=i, input=x)
                         for i, x in zip(out["instruction"], out["input"])]
        answers = out["output"]
    else:  # prompt-completion: the prompt as written
        answers = out["completion"]
    out["description"] = answers
    out["response"] = answers + RESPONSE_SUFFIX
    out["text"] = out["prompt"] + out["response"]
    return out


# --------------------------------------------------------------------------- loading
def load_table(source: str | os.PathLike = "sample") -> pd.DataFrame:
    """Rows with at least product/category/description, from any of the three sources."""
    source = str(source)
    if source == "sample":
        if not SAMPLE_PATH.exists():
            raise CourseError(
                f"The bundled sample {SAMPLE_PATH} is missing: install the course from its repository "
                "(git clone, then pip install -e .) so the data/ folder is present."
            )
        return _read_file(SAMPLE_PATH)
    path = check_source(source)
    return _read_file(path) if path is not None else _load_hub(source)


def check_source(source: str | os.PathLike) -> Path | None:
    """The local file a data source names (None for a hub id), refused at once if missing or not a table file.

    Cheap: nothing is read, so a run checks its source before any model loads.
    """
    source = str(source)
    path = Path(source).expanduser()
    if source == "sample" or not (path.exists() or _looks_like_a_path(source)):
        return None
    if not path.exists():
        raise CourseError(f"Data file {path} does not exist: check the path or use the bundled sample ('sample').")
    if path.is_file() and path.suffix.lower() not in FILE_SUFFIXES:
        raise CourseError(f"{path} is not a CSV, JSONL or parquet file (suffix {path.suffix or 'none'!r}): "
                          "convert it to one of those, with the columns product, category, description.")
    return path


FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def _looks_like_a_path(source: str) -> bool:
    """A hub id is "owner/name" or "name"; a path starts with ., ~ or /, has several parts, or a file suffix."""
    suffix = Path(source).suffix.lower()
    return (source.startswith((".", "~", "/", os.sep)) or source.count("/") > 1 or suffix in FILE_SUFFIXES
            or suffix in (".txt", ".tsv", ".xlsx", ".xls", ".gz", ".zip", ".arrow") or ("/" not in source and suffix != ""))


def _read_file(path: Path) -> pd.DataFrame:
    """A table from a CSV, JSONL or parquet file; any problem becomes one sentence naming the file."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise CourseError(f"{path} is a folder, not a data file: pass a .csv, .jsonl or .parquet file.")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise CourseError(f"Cannot read {path} ({exc.strerror or exc}): check the file's permissions.") from None
    # Read every column as text so "0042" stays "0042" whatever the file type.
    if suffix == ".csv":
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise CourseError(f"{path} is not a readable CSV file ({_first_line(exc)}): fix or re-export it.") from None
    if suffix in {".jsonl", ".json"}:
        return _read_json(path, lines=suffix == ".jsonl")
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a file that is not parquet
            raise CourseError(f"{path} is not a parquet file ({_first_line(exc)}): pass a real parquet file, "
                              "or give it the suffix of its real format.") from None
    raise CourseError(f"Cannot read {path}: use a .csv, .jsonl or .parquet file.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _read_json(path: Path, lines: bool) -> pd.DataFrame:
    """JSON Lines (one object per line) or a JSON array; a broken line is named by its number."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CourseError(f"{path} is not UTF-8 text: a JSON Lines file must be text; re-save it as UTF-8.") from None
    if not lines:
        try:
            return pd.DataFrame(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise CourseError(f"{path} is not a JSON array of records ({_first_line(exc)}): fix the file.") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise CourseError(f"{path}, line {number}, is not valid JSON ({exc.msg}): fix that line "
                              "(each line must hold one JSON object).") from None
        if not isinstance(record, dict):
            raise CourseError(f"{path}, line {number}, holds a {type(record).__name__}, not an object: "
                              "each line must be one JSON object with product, category and description.")
        records.append(record)
    return pd.DataFrame.from_records(records)


def _load_hub(dataset_id: str) -> pd.DataFrame:
    # Here, not at the top: in a notebook, importing datasets or huggingface_hub warns (tqdm's IProgress)
    # unless quiet.install() ran first, and the chapter set-up imports this module before it runs it.
    import datasets
    from huggingface_hub import constants

    offline_msg = (
        f"Cannot reach the dataset {dataset_id!r} on the model hub (this machine is offline): "
        "pass a local CSV/JSONL/parquet file instead, or use the bundled sample ('sample')."
    )
    if constants.HF_HUB_OFFLINE:
        raise CourseError(offline_msg)
    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as exc:  # network errors come in many types across versions
        raise CourseError(offline_msg) from exc
    return ds.to_pandas()


# --------------------------------------------------------------------------- validation
@dataclass
class DataReport:
    """What cleaning and the length check did to the rows; nothing is dropped unreported."""

    source: str
    rows_read: int = 0
    empty_dropped: int = 0
    duplicates: int = 0
    duplicates_dropped: int = 0
    overlong: int = 0
    overlong_action: str = "truncate"
    rows_sampled: int = 0
    train_rows: int = 0
    test_rows: int = 0
    max_length: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"data from {self.source}: {self.rows_read} rows read"]
        lines += [f"  - {n}" for n in self.notes]
        lines.append(f"  -> {self.rows_sampled} rows used: {self.train_rows} train / {self.test_rows} test")
        return "\n".join(lines)


def clean_table(df: pd.DataFrame, source: str = "table", drop_duplicates: bool = True,
                columns: tuple[str, ...] = COLUMNS, optional: tuple[str, ...] = ()) -> tuple[pd.DataFrame, DataReport]:
    """Check the schema; drop (and count) rows with an empty required field, and exact duplicates.

    `columns` are the shape's columns (the post's three by default, see `formats`);
    an `optional` one (Alpaca's `input`) may be empty.
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CourseError(
            f"The dataset from {source} lacks the column(s) {', '.join(missing)}: "
            f"it needs {', '.join(columns)} (found {', '.join(map(str, df.columns)) or 'none'})."
        )
    report = DataReport(source=source, rows_read=len(df))
    out = df[list(columns)].copy()
    for col in columns:
        out[col] = out[col].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v).strip())
    empty = (out[[c for c in columns if c not in optional]] == "").any(axis=1)
    if empty.any():
        report.empty_dropped = int(empty.sum())
        report.notes.append(f"{report.empty_dropped} row(s) with an empty or whitespace-only field dropped")
        out = out[~empty]
    dup = out.duplicated(keep="first")
    if dup.any():
        report.duplicates = int(dup.sum())
        if drop_duplicates:
            report.duplicates_dropped = report.duplicates
            out = out[~dup]
            report.notes.append(f"{report.duplicates} duplicated row(s) found and dropped (first copy kept)")
        else:
            report.notes.append(f"{report.duplicates} duplicated row(s) found and kept")
    if out.empty:
        raise CourseError(f"The dataset from {source} has no usable rows after cleaning: every row had an empty field.")
    return out.reset_index(drop=True), report


def token_lengths(texts: list[str], tokenizer) -> list[int]:
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


# --------------------------------------------------------------------------- the pipeline
@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with prompt / response / text (+ product, category, description)
    test: Any
    report: DataReport


def prepare_data(
    settings: DataSettings,
    tokenizer=None,
    max_length: int | None = None,
    table: pd.DataFrame | None = None,
) -> PreparedData:
    """Load, clean, format, length-check, sample and split, as in the blog.

    With a tokenizer and `max_length`, rows whose text is longer than `max_length`
    tokens are counted; `settings.overlong` decides whether they are dropped or
    left for the trainer to truncate.
    """
    import datasets  # after the chapter set-up, as in _load_hub

    df = load_table(settings.source) if table is None else table
    # The post's product rows, Alpaca rows, prompt/completion pairs, or a table with a column mapping.
    df, shape = shape_rows(df, settings.columns, settings.source)
    roles = SHAPES[shape]
    df, report = clean_table(df, source=settings.source, columns=tuple(roles),
                             optional=tuple(r for r, required in roles.items() if not required))
    df = format_shaped(df, shape)

    report.overlong_action = settings.overlong
    report.max_length = max_length
    if tokenizer is not None and max_length is not None:
        # +1 for the EOS token that the trainer appends.
        lengths = [n + 1 for n in token_lengths(df["text"].tolist(), tokenizer)]
        over = [n > max_length for n in lengths]
        report.overlong = int(sum(over))
        if report.overlong:
            verb = "dropped" if settings.overlong == "drop" else "will be truncated"
            report.notes.append(f"{report.overlong} row(s) longer than max_length={max_length} tokens {verb}")
            if settings.overlong == "drop":
                df = df[[not o for o in over]].reset_index(drop=True)

    if settings.n_rows is not None:
        if settings.n_rows > len(df):
            raise CourseError(
                f"Asked for {settings.n_rows} rows but the dataset from {settings.source} has {len(df)} usable rows: "
                "lower n_rows (--set n_rows=N on the command line) or pass a larger dataset."
            )
        # pandas' sample with a seed, as the blog does (random_state=42).
        df = df.sample(n=settings.n_rows, random_state=settings.sample_seed)
    report.rows_sampled = len(df)

    test_size = int(settings.test_size) if settings.test_size >= 1 else settings.test_size
    if isinstance(test_size, int) and test_size >= len(df):
        raise CourseError(f"A test split of {test_size} rows needs more than the {len(df)} usable rows: "
                          "lower test_size (--set test_size=N, or a share such as 0.2) or pass a larger dataset.")
    ds = datasets.Dataset.from_pandas(df.reset_index(drop=True), preserve_index=False)
    split = ds.train_test_split(test_size=test_size, seed=settings.split_seed)
    train = split["train"]
    if settings.train_rows is not None:
        if settings.train_rows > len(train):
            raise CourseError(f"Asked for a slice of {settings.train_rows} training rows but the split has {len(train)}: "
                              "lower train_rows (--set train_rows=N).")
        train = train.select(range(settings.train_rows))
        report.notes.append(f"training on the first {settings.train_rows} rows of the training split only")
    report.train_rows, report.test_rows = len(train), len(split["test"])
    return PreparedData(train=train, test=split["test"], report=report)


def held_out(profile, tokenizer) -> Any:
    """The held-out rows of `profile` (a `settings.Profile`): the ones every run of it is scored on, split as its
    runs split their data."""
    return prepare_data(profile.data, tokenizer, profile.train.max_length).test


# --------------------------------------------------------------------------- data card
@dataclass
class DataCard:
    """Counts and length distributions of a product table, for chapter 1."""

    rows: int
    categories: int
    top_categories: dict[str, int]
    description_words: list[int]
    description_tokens: list[int] | None
    text_tokens: list[int] | None  # prompt + response + EOS, what the trainer sees

    @staticmethod
    def _summary(values: list[int]) -> dict[str, float]:
        s = pd.Series(values)
        return {"min": int(s.min()), "median": float(s.median()), "mean": float(s.mean()), "p95": float(s.quantile(0.95)), "max": int(s.max())}

    def summary(self) -> pd.DataFrame:
        """One row per length measure: min, median, mean, 95th percentile, max."""
        rows = {"description (words)": self._summary(self.description_words)}
        if self.description_tokens is not None:
            rows["description (tokens)"] = self._summary(self.description_tokens)
            rows["training text (tokens)"] = self._summary(self.text_tokens)
        return pd.DataFrame(rows).T

    def share_over(self, max_length: int) -> float:
        """Fraction of rows whose training text is longer than `max_length` tokens."""
        if self.text_tokens is None:
            raise CourseError("This data card was made without a tokenizer: pass one to data_card() to count tokens.")
        return sum(n > max_length for n in self.text_tokens) / len(self.text_tokens)


def data_card(df: pd.DataFrame, tokenizer=None, top: int = 10) -> DataCard:
    df, _ = clean_table(df)
    formatted = format_rows(df)
    words = [len(d.split()) for d in df["description"]]
    desc_tokens = text_tokens = None
    if tokenizer is not None:
        desc_tokens = token_lengths(df["description"].tolist(), tokenizer)
        # +1 for the EOS token the trainer appends.
        text_tokens = [n + 1 for n in token_lengths(formatted["text"].tolist(), tokenizer)]
    counts = df["category"].value_counts()
    return DataCard(
        rows=len(df),
        categories=int(counts.size),
        top_categories={str(k): int(v) for k, v in counts.head(top).items()},
        description_words=words,
        description_tokens=desc_tokens,
        text_tokens=text_tokens,
    )
