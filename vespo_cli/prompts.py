"""A problem and its prompt: the `Problem` record every prompt source yields, the paper's template,
and a problem's chat messages and token ids."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

PAPER_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    source: str


def build_messages(problem: Problem, template: str) -> list[dict]:
    """Chat messages for one problem: a single user turn, `template` with `{problem}` filled in."""
    if "{problem}" not in template:
        raise UserError(f"template {template!r}: expected a template containing {{problem}}")
    try:
        content = template.format(problem=problem.problem)
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"template {template!r}: {e!r} (write literal braces as {{{{ }}}})") from None
    return [{"role": "user", "content": content}]


def encode_prompt(tokenizer, problem: Problem, template: str, max_prompt_tokens: int | None = None) -> list[int]:
    """Chat-template token ids of one problem; longer than `max_prompt_tokens` is a user error."""
    ids = tokenizer.apply_chat_template(build_messages(problem, template), add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers may return a BatchEncoding
        ids = ids["input_ids"]
    ids = [int(t) for t in ids]
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        raise UserError(f"prompt {problem.id}: {len(ids)} tokens > data.max_prompt_tokens={max_prompt_tokens}")
    return ids
