"""The prompt sources by name, and whether a string can be one, decided without reading anything.

`data.py` loads them (its docstring lists what each name is); the names and the check are here, below
it, so that the config checks `data.train` and `eval.benchmarks` without importing the loaders."""

from __future__ import annotations

import re
from pathlib import Path

BUNDLED = {  # name -> file in vespo_cli/data/
    "aime24": "aime24.jsonl",
    "aime25": "aime25.jsonl",
    "amc23": "amc23.jsonl",
    "math500": "math500.jsonl",
    "gsm8k": "gsm8k_test.jsonl",
}
# name -> (file name in a data dir, hub id, hub config, hub split)
TRAIN_SETS = {
    "dapo-math-17k": ("dapo_math_17k.jsonl", "BytedTsinghua-SIA/DAPO-Math-17k", None, "train"),
    "gsm8k-train": ("gsm8k_train.jsonl", "openai/gsm8k", "main", "train"),
}
ALIASES = {
    "math-500": "math500",
    "gsm8k-test": "gsm8k",
    "dapo-math": "dapo-math-17k",
    "dapo": "dapo-math-17k",
    "dapo-math-17k-train": "dapo-math-17k",
}
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


def source_names() -> list[str]:
    """The known source names (bundled eval sets, training sets, `arith`)."""
    return [*BUNDLED, *TRAIN_SETS, "arith"]


def check_source(source: str) -> str | None:
    """Why `source` cannot be a prompt source (None: it can), decided without reading it: a known
    name, an existing .jsonl/.json/.parquet file, or a hub id owner/name[:split]."""
    if canonical_source(source) in (*BUNDLED, *TRAIN_SETS, "arith"):
        return None
    path = Path(source).expanduser()
    if path.is_file():
        return None if path.suffix.lower() in FILE_SUFFIXES else f"{source}: expected a .jsonl, .json or .parquet file"
    if path.is_dir():
        return f"{source}: is a directory; expected a .jsonl, .json or .parquet file"
    if path.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~")):
        return f"{source}: file not found"
    if HUB_ID.match(source):
        return None
    return (
        f"unknown data source {source!r} (expected one of {', '.join(source_names())}, "
        "a .jsonl/.json/.parquet path, or a Hugging Face dataset id owner/name[:split])"
    )


def canonical_source(source: str) -> str:
    """The canonical name of a known source (`GSM8K_train` -> `gsm8k-train`), else `source` unchanged."""
    key = source.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key in BUNDLED or key in TRAIN_SETS or key == "arith":
        return key
    return source
