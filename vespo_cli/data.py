"""Prompt sources: bundled eval sets, training sets (DAPO-Math-17k, GSM8K train), any local
.jsonl/.json/.parquet file or Hugging Face dataset id, and procedural arithmetic problems.

`load_problems(source)` accepts:
  - `aime24`, `aime25`, `amc23`, `math500`, `gsm8k` (test split): bundled in `vespo_cli/data/`;
  - `dapo-math-17k`, `gsm8k-train`: looked up in $VESPO_DATA_DIR, then `../shared/data` next to the
    repository root, then the Hugging Face Hub (BytedTsinghua-SIA/DAPO-Math-17k, openai/gsm8k);
  - `arith`: an endless deterministic stream of arithmetic problems (`difficulty` 1..5: bare sums
    of two digits up to multi-step word problems with 3-digit numbers; `arith.py`);
  - a path to a .jsonl/.json/.parquet file with `problem`/`question` and `answer` fields;
  - a hub id `owner/name` or `owner/name:split` (default split `train`), when the hub is reachable.

Every source yields `Problem`s; `prompts.py` holds the record and the prompt formatting (template,
chat messages, token ids), re-exported here with the arithmetic stream; `catalog.py` holds the source
names and `check_source` (re-exported too), which the config uses without importing this module.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .arith import arith_eval_problems, arith_problem
from .arith import iter_arith as iter_arith  # `name as name`: re-exported for importers of vespo_cli.data
from .catalog import BUNDLED, FILE_SUFFIXES, HUB_ID, TRAIN_SETS, canonical_source, source_names
from .catalog import check_source as check_source  # re-exported: the source names and check are catalog.py's
from .errors import UserError
from .prompts import PAPER_TEMPLATE as PAPER_TEMPLATE  # likewise build_messages, encode_prompt
from .prompts import Problem
from .prompts import build_messages as build_messages
from .prompts import encode_prompt as encode_prompt

EVAL_SETS = {"aime24": 32, "aime25": 32, "amc23": 16, "math500": 4, "gsm8k": 1}  # paper's default k

BUNDLED_DIR = Path(__file__).resolve().parent / "data"
ARITH_DEFAULT_SIZE = 10_000  # `load_problems("arith")` without a limit
ARITH_EVAL_SIZE = 640  # `load_problems("arith", split="eval")` without a limit: eval SE ≤ 0.5/√640 < 2 points


def load_problems(
    source: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    difficulty: int | Sequence[int] = 1,
    shuffle: bool = False,
    split: str = "train",
) -> list[Problem]:
    """Problems from `source` (see the module docstring). `shuffle` permutes with `seed` before
    `limit` is applied. For `arith`, `seed` and `difficulty` define the stream and `limit` takes its
    first `limit` problems (default `ARITH_DEFAULT_SIZE`); `split="eval"` gives its held-out problems
    instead (`arith_eval_problems`, default ARITH_EVAL_SIZE; other sources have one split)."""
    if limit is not None and limit < 0:
        raise UserError(f"limit {limit}: expected a non-negative integer")
    name = canonical_source(source)
    if name == "arith" and split == "eval":
        return arith_eval_problems(difficulty, ARITH_EVAL_SIZE if limit is None else limit)
    if name == "arith":
        n = ARITH_DEFAULT_SIZE if limit is None else limit
        return [arith_problem(seed, difficulty, i) for i in range(n)]
    if name in BUNDLED:
        problems = _read_file(BUNDLED_DIR / BUNDLED[name], name)
    elif name in TRAIN_SETS:
        problems = _load_train_set(name)
    else:
        problems = _load_other(source)
    if shuffle:
        problems = list(problems)
        random.Random(seed).shuffle(problems)
    return problems if limit is None else problems[:limit]


# ------------------------------------------------------------------------------------ file reading


def _read_file(path: Path, source: str) -> list[Problem]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif suffix == ".json":
            obj = json.loads(path.read_text(encoding="utf-8"))
            rows = obj if isinstance(obj, list) else obj.get("data") if isinstance(obj, dict) else None
            if not isinstance(rows, list):
                raise UserError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
        else:
            rows = []
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # malformed parquet/json
        raise UserError(f"{path}: cannot read as {suffix[1:]} ({type(e).__name__}: {e})") from None
    stem = _stem(path)
    return [
        _to_problem(row, i, source=source, default_prefix=stem, where=f"{path}:{i + 1}") for i, row in enumerate(rows)
    ]


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


_DAPO_PREFIX = re.compile(
    r"^Solve the following math problem step by step\. The last line of your response should be of the form "
    r"Answer: \$Answer \(without quotes\) where \$Answer is the answer to the problem\.\s*"
)
_DAPO_SUFFIX = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$")


def _message_text(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):  # chat messages: the last user turn
        for m in reversed(prompt):
            if isinstance(m, dict) and m.get("role", "user") == "user" and isinstance(m.get("content"), str):
                return m["content"]
    return None


def _to_problem(row: Any, index: int, *, source: str, default_prefix: str, where: str) -> Problem:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with problem and answer fields")
    text = None
    for key in ("problem", "question", "prompt", "query", "input"):
        if key in row:
            text = _message_text(row[key])
            if text is not None:
                break
    if text is None:
        raise UserError(f"{where}: expected a `problem` (or `question`/`prompt`) field, got keys {sorted(row)}")
    text = _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", text)).strip()
    answer = None
    for key in ("answer", "ground_truth", "final_answer", "target"):
        if row.get(key) is not None:
            answer = row[key]
            break
    if answer is None and isinstance(row.get("reward_model"), dict):
        answer = row["reward_model"].get("ground_truth")
    if answer is None and isinstance(row.get("solution"), str):  # MATH-style: the boxed answer
        from .rewards import extract_answer

        answer = extract_answer(row["solution"])
    if answer is None:
        raise UserError(f"{where}: expected an `answer` (or `ground_truth`) field, got keys {sorted(row)}")
    answer = str(answer).strip()
    if "####" in answer:  # GSM8K-style "reasoning #### 42"
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    pid = row.get("id", row.get("unique_id"))
    if pid is None and isinstance(row.get("extra_info"), dict):
        pid = row["extra_info"].get("index")
    pid = str(pid) if pid is not None else f"{default_prefix}-{index}"
    src = row.get("source") if isinstance(row.get("source"), str) else source
    return Problem(id=pid, problem=text, answer=answer, source=src)


# ---------------------------------------------------------------------------- training sets / hub


def data_dirs() -> list[Path]:
    """Where the big training sets are looked up, in order: $VESPO_DATA_DIR, ../shared/data, and
    the copies bundled with the package (vespo_cli/data/*.parquet, converted from shared/data's
    jsonl with the same rows), so the paper presets find their data on any machine."""
    dirs = []
    if os.environ.get("VESPO_DATA_DIR"):
        dirs.append(Path(os.environ["VESPO_DATA_DIR"]).expanduser())
    dirs.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    dirs.append(Path(__file__).resolve().parent / "data")
    return dirs


def _load_train_set(name: str) -> list[Problem]:
    filename, hub_id, config, split = TRAIN_SETS[name]
    dirs = data_dirs()
    for d in dirs:
        for candidate in (d / filename, d / filename.replace(".jsonl", ".parquet")):
            if candidate.is_file():
                return _read_file(candidate, _stem(candidate))
    looked = ", ".join(str(d) for d in dirs)
    env_note = "" if os.environ.get("VESPO_DATA_DIR") else " ($VESPO_DATA_DIR unset)"
    problems = _load_hub(hub_id, config, split, name, where=f"{filename} not in {looked}{env_note}")
    if name == "dapo-math-17k":  # the hub copy repeats the prompt list ~100 times
        seen: dict[str, Problem] = {}
        for p in problems:
            seen.setdefault(p.problem, p)
        problems = [
            Problem(f"dapo_math_17k-{i}", p.problem, p.answer, "dapo_math_17k") for i, p in enumerate(seen.values())
        ]
    return problems


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _offline_mode() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _load_hub(hub_id: str, config: str | None, split: str, source: str, where: str = "") -> list[Problem]:
    prefix = f"{source}: {where}; " if where else f"{source}: "
    # Offline mode reads the local datasets cache; otherwise fail fast when the hub is unreachable
    # (datasets would retry with backoff first).
    if not _offline_mode() and not _hub_reachable():
        raise UserError(
            f"{prefix}the Hugging Face Hub is unreachable, so {hub_id} cannot be downloaded "
            "(give a local .jsonl/.parquet path or set VESPO_DATA_DIR)"
        )
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{prefix}could not load {hub_id} (split {split}) with `datasets`: {msg[:200]}") from None
    stem = hub_id.split("/")[-1]
    return [_to_problem(row, i, source=stem, default_prefix=stem, where=f"{hub_id}[{i}]") for i, row in enumerate(ds)]


def _load_other(source: str) -> list[Problem]:
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise UserError(f"{source}: expected a .jsonl, .json or .parquet file")
        return _read_file(path, _stem(path))
    if path.is_dir():
        raise UserError(f"{source}: is a directory; expected a .jsonl, .json or .parquet file")
    if path.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~")):
        raise UserError(f"{source}: file not found")
    if HUB_ID.match(source):
        hub_id, _, split = source.partition(":")
        return _load_hub(hub_id, None, split or "train", source)
    raise UserError(
        f"data source {source!r}: expected one of {', '.join(source_names())}, "
        "a .jsonl/.json/.parquet path, or a Hugging Face dataset id owner/name[:split]"
    )
