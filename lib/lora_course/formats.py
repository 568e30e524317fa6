"""Data shapes beyond the post's: Alpaca rows, prompt/completion pairs, any table with a column mapping.

    shape             columns (by role)                 prompt the model sees
    product           product, category, description    the post's instruction in the Alpaca template (default)
    alpaca            instruction, input (optional),    the Alpaca template, with an "### Input:" part
                      output                            when `input` is not empty
    prompt-completion prompt, completion                the prompt as written

`columns` maps roles to the table's own column names, e.g.
{"instruction": "question", "response": "answer"} ("response" is another name
for the role "output"). Without a mapping the shape is read off the columns:
product columns first, so the post's data stays the default.

`data.format_shaped` then leaves the same frame for every shape, for the rest
of `data.prepare_data` (length check, sampling, split): `prompt`, `response`
(the answer + "\\n### End"),
`text` = prompt + response, and `description`, the reference answer the
held-out evaluation compares generations with (for the post's rows, the
product description itself). Cleaning strips every field as it does the
post's, so a prompt/completion pair joins as prompt + completion.strip(): end
the prompt with the separator (a space, a newline) that should come before the answer.
"""

from __future__ import annotations

import pandas as pd

from .errors import CourseError

# role -> required?; the order is the order errors list them in
SHAPES: dict[str, dict[str, bool]] = {
    "product": {"product": True, "category": True, "description": True},
    "alpaca": {"instruction": True, "input": False, "output": True},
    "prompt-completion": {"prompt": True, "completion": True},
}
ROLE_ALIASES = {"response": "output", "answer": "output", "question": "instruction"}


def parse_columns(text: str) -> dict[str, str]:
    """"instruction=question,response=answer" -> {"instruction": "question", "response": "answer"}."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, sep, column = item.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not role or not column:
            raise CourseError(f"--columns item {item!r} is not ROLE=COLUMN: write e.g. "
                              "--columns instruction=question,response=answer.")
        mapping[role] = column
    return mapping


def _shapes_text() -> str:
    return "; ".join(f"{shape}: " + ", ".join(roles) for shape, roles in SHAPES.items())


def _roles(columns: dict[str, str] | None) -> dict[str, str]:
    return {ROLE_ALIASES.get(role, role): column for role, column in (columns or {}).items()}


def detect_shape(df: pd.DataFrame, columns: dict[str, str] | None = None, source: str = "table") -> str:
    """Which shape the table has: by the mapping's roles when there is one, else by its column names."""
    roles = _roles(columns)
    candidates = list(SHAPES)
    if roles:
        candidates = [s for s in SHAPES if set(roles) <= set(SHAPES[s])]
        if not candidates:
            known = sorted({r for shape in SHAPES.values() for r in shape} | set(ROLE_ALIASES))
            raise CourseError(f"--columns names the role(s) {', '.join(sorted(roles))}, which no data shape has together: "
                              f"use roles of one shape ({_shapes_text()}); "
                              f"known roles are {', '.join(known)}.")
    present = set(map(str, df.columns)) | set(roles)
    for shape in candidates:
        if all(role in present for role, required in SHAPES[shape].items() if required):
            return shape
    return candidates[0]


def shape_rows(df: pd.DataFrame, columns: dict[str, str] | None = None, source: str = "table") -> tuple[pd.DataFrame, str]:
    """The table's columns renamed to the roles of its shape (mapping applied and checked); returns (frame, shape)."""
    roles = _roles(columns)
    missing = [f"{role}={column}" for role, column in (columns or {}).items() if column not in df.columns]
    if missing:
        raise CourseError(f"--columns maps {', '.join(missing)}, but the dataset from {source} has no such column: "
                          f"its columns are {', '.join(map(str, df.columns)) or 'none'}.")
    shape = detect_shape(df, columns, source)
    out = df.rename(columns={column: role for role, column in roles.items()})
    need = [role for role, required in SHAPES[shape].items() if required and role not in out.columns]
    if need:
        shapes = _shapes_text()
        raise CourseError(
            f"The dataset from {source} lacks the column(s) {', '.join(need)}: it needs {', '.join(SHAPES[shape])} "
            f"(found {', '.join(map(str, df.columns)) or 'none'}), or the columns of another data shape ({shapes}), "
            "or a mapping such as --columns instruction=question,response=answer."
        )
    for role, required in SHAPES[shape].items():
        if not required and role not in out.columns:
            out[role] = ""
    return out, shape
