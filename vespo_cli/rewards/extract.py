"""The answer-extraction policy: which span of a response is its final answer, and how it is normalised.

Order, on the last `MAX_RESPONSE_CHARS` characters of a response:
  1. the last complete, non-empty `\\boxed{...}` / `\\fbox{...}` (balanced braces). A box longer than
     `MAX_ANSWER_CHARS` is no answer, and the search stops there: nothing is mined from inside it;
  2. else the last explicit final-answer phrase: `Answer:` (DAPO's format, also `**Answer:**`),
     `Final answer:`, `The (final) answer is ...`, and their common non-English forms (`ANSWER_PHRASES`:
     `答案：`, `答案是`, `答えは`, `정답은`, `Antwort:`, `Die Antwort ist`, `Réponse :`, `Ответ:`, ...);
  3. else, only under `fallback="final_number"` (a preset opts in): a number that stands alone on the
     last non-empty line, or that follows an "=" at the very end of the response. A response that
     merely restates a question ("What is 2 + 8?") has no such number, so an echo earns nothing.
There is no "last number anywhere" rule: it pays echoes of the question.

Given the question, a span that reproduces the question's text is an echo, not an answer (`_copied`):
a box or a phrase with its markup, a final line with its words. A bare number (or "= number") on the
last line is judged with the line before it: it is an echo when those two lines are question text,
not when the number merely occurs in the question (a correct "42" is paid though the question says 42).

Both the extracted answer and the reference go through `normalise()` (the `NORMALISERS` table) before
math-verify parses them, so every convention applies to both sides alike.
"""

from __future__ import annotations

import re
from typing import Literal

MAX_RESPONSE_CHARS = 4096  # only the tail of a response is considered (answers come last)
MAX_ANSWER_CHARS = 512  # an extracted answer longer than this is not an answer
Fallback = Literal["none", "final_number"]
FALLBACKS: tuple[str, ...] = ("none", "final_number")

# ------------------------------------------------------------------------------------------ boxes

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _matching_braces(text: str) -> dict[int, int]:
    """Map index of each `{` to the index of its matching `}` (linear; `\\{`, `\\}` are literals)."""
    match: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def last_boxed(text: str, question: str = "") -> str | None:
    """Content of the last complete, non-empty box not copied from `question` ('' when that box is
    over-long), or None."""
    starts = [(m.start(), m.end() - 1) for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    match = _matching_braces(text)
    for box_idx, open_idx in reversed(starts):
        close_idx = match.get(open_idx)
        if close_idx is None:
            continue  # truncated box
        content = text[open_idx + 1 : close_idx].strip()
        if content and not _copied(text[box_idx : close_idx + 1], question):
            return content if len(content) <= MAX_ANSWER_CHARS else ""
    return None


def _copied(span: str, question: str) -> bool:
    """Whether `span` of a response is text of the question (an echo, not an answer); runs of
    whitespace compare equal, so a restated question wrapped differently is still an echo."""
    return bool(question) and " ".join(span.split()) in " ".join(question.split())


# ---------------------------------------------------------------------------------------- phrases

# language: (the word for "answer", the copula of "the answer is"), as regex alternatives. A phrase is
# `<word>: x` / `<word>：x` or `<word> <copula> x` (`Answer: x`, `**Answer:** x`, `The answer is x`,
# `the final answer is: x`, `答案：x`, `答案是 x`, `Die Antwort ist x`, `Ответ: x`).
ANSWER_PHRASES: dict[str, tuple[str, str]] = {
    "en": (r"\banswer", r"\bis\b"),
    "zh": (r"答案", r"是|为|為"),
    "ja": (r"答え", r"は"),
    "ko": (r"답", r"은|는"),
    "de": (r"\bantwort", r"\bist\b|\blautet\b"),
    "fr": (r"\bréponse", r"\best\b"),
    "es": (r"\brespuesta", r"\bes\b"),
    "pt": (r"\bresposta", r"\bé(?!\w)"),
    "it": (r"\brisposta", r"\bè(?!\w)"),
    "ru": (r"\bответ", r"\bравен\b|\bравно\b"),
}
_PHRASE_RE = re.compile(
    rf"(?:{'|'.join(w for w, _ in ANSWER_PHRASES.values())})\s*(?:\*\*|__)?\s*"
    rf"(?P<sep>[:：]|(?:{'|'.join(c for _, c in ANSWER_PHRASES.values())})\s*[:：]?)\s*(?:\*\*|__)?(?P<content>[^\n]*)",
    re.IGNORECASE,
)
_MATH_SPANS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
# "the answer is in the form ...": a lowercase word after "is" starts prose, not an answer.
_PROSE_START = re.compile(r"^[a-z]{2,}\b")
# After "the answer is", prose may follow the answer: cut at the end of the sentence or a ", because".
# Polite sentence endings (`答えは5です`, `정답은 5입니다`) end it too.
_SENTENCE_END = re.compile(
    r"\.(?:\s|$)|。|,\s+(?=[A-Za-z]{3,})|;\s|\s+(?:because|since|which|as)\s|\s*(?:です|である|입니다|이다)",
    re.IGNORECASE,
)


def _math_span(s: str) -> tuple[str, int] | None:
    """The leading `$...$` / `\\(...\\)` span of `s` and where it ends, or None."""
    for left, right in _MATH_SPANS:
        if s.startswith(left):
            end = s.find(right, len(left))
            if end > len(left):
                return s[len(left) : end], end + len(right)
            return None
    return None


def _phrase_content(raw: str, after_is: bool) -> tuple[str, int]:
    """The answer at the start of `raw` (the rest of a phrase's line) and how many characters of
    `raw` it takes up; ("", 0) when `raw` starts with prose."""
    s = raw.lstrip(" \t*_")
    offset = len(raw) - len(s)
    span = _math_span(s)
    if span is not None:
        return span[0].strip(), offset + span[1]
    if after_is and _PROSE_START.match(s):
        return "", 0
    end = _SENTENCE_END.search(s)
    if end:
        s = s[: end.start()]
    return s.strip().strip("*_").rstrip(".").strip(), offset + len(s)


def last_answer_phrase(text: str, question: str = "") -> str | None:
    """The answer after the last final-answer phrase that is not copied from `question`."""
    for m in reversed(list(_PHRASE_RE.finditer(text))):
        content, used = _phrase_content(m.group("content"), after_is=not any(c in m.group("sep") for c in ":："))
        if content and not _copied(text[m.start() : m.start("content") + used], question):
            return content
    return None


# ------------------------------------------------------------------------------- final-line number

_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?"
_ALONE_RE = re.compile(rf"^(?:\*\*|\$|\\\(|\s)*({_NUM})(?:\*\*|\$|\\\)|\s)*\.?$")
_AFTER_EQ_RE = re.compile(rf"=\s*\$?\s*({_NUM})\s*\$?\s*\.?\s*$")
_BARE_EQ_RE = re.compile(rf"^(?:\*\*|\$|\\\(|\s)*{_AFTER_EQ_RE.pattern}")  # `= 42` and nothing before it


def final_number(text: str, question: str = "") -> str | None:
    """A number alone on the last non-empty line, or after an "=" that ends the response, unless that
    line is question text: the line itself, or for a bare number (`42`, `= 42`) the line with the one
    before it, so a number is not refused only because the question contains it."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    last = lines[-1]
    m = _ALONE_RE.match(last) or _AFTER_EQ_RE.search(last)
    if m is None:
        return None
    bare = _ALONE_RE.match(last) or _BARE_EQ_RE.match(last)
    if bare and len(lines) == 1:
        return m.group(1)  # the number and nothing else: an answer, whatever the question contains
    return None if _copied("\n".join(lines[-2:] if bare else lines[-1:]), question) else m.group(1)


def extract_answer(response: str, fallback: Fallback = "none", question: str = "") -> str | None:
    """The final answer written in `response` under the policy above, or None. With the `question`,
    a box, phrase or final line copied verbatim from it is not an answer (an echo is paid nothing)."""
    text = response[-MAX_RESPONSE_CHARS:]
    ans = last_boxed(text, question)
    if ans == "":
        return None  # an over-long box: no answer, and nothing mined from it
    if ans is None:
        ans = last_answer_phrase(text, question)
    if ans is None and fallback == "final_number":
        ans = final_number(text, question)
    if ans is not None and len(ans) > MAX_ANSWER_CHARS:
        return None
    return ans


# ------------------------------------------------------------------------------------ normalising

_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}  # full-width ASCII forms → ASCII
_UNICODE = {
    **_FULLWIDTH,
    0x3000: " ",  # ideographic space
    0x2212: "-",
    0x2013: "-",
    0xFE63: "-",  # minus sign, en dash, small hyphen-minus
    0x00D7: "\\times ",
    0x22C5: "\\cdot ",
    0x00F7: "\\div ",
    0x03C0: "\\pi ",
    0x221E: "\\infty ",
    0x221A: "\\sqrt",
    0x2264: "\\le ",
    0x2265: "\\ge ",
    0x2260: "\\ne ",
    0x00B0: "^\\circ",
    0x00BD: "\\frac{1}{2}",
    0x00BC: "\\frac{1}{4}",
    0x00BE: "\\frac{3}{4}",
}
_THIN_SPACES = "\u2009\u202f\u00a0\u2007"
_UNIT_WORD = r"(?!(?:pi|sqrt|infty|and|or)\b)[A-Za-z]{2,}\.?"
_UNIT = (
    rf"(?:\s*\\(?:text|textrm|mathrm|mbox)\s*\{{\s*[A-Za-z][A-Za-z .]*\}}"
    rf"|\s+{_UNIT_WORD}|\s*/\s*[A-Za-z]+|\^\{{?[23]\}}?)"
)
_SCI_RE = re.compile(r"^(-?\d+(?:\.\d+)?)\s*[eE]\s*([+-]?\d+)$")
_INEQ_RE = re.compile(r"^([a-zA-Z])\s*(<|>|\\le(?:q)?|\\ge(?:q)?|\\lt|\\gt)\s*(-?[^<>=\s][^<>=]*)$")
_INEQ_OPS = {"<": "<", "\\lt": "<", ">": ">", "\\gt": ">", "\\le": "<=", "\\leq": "<=", "\\ge": ">=", "\\geq": ">="}

# (what, pattern, replacement, why) — applied in order to the extracted answer and to the reference.
NORMALISERS: list[tuple[str, re.Pattern, str, str]] = [
    ("null bytes / control chars", re.compile(r"[\x00-\x08\x0b-\x1f\x7f]"), "", "never part of an answer"),
    (
        "thousands: LaTeX spaces",
        re.compile(r"(?<=\d)(?:\{,\}|\\,|\\!|\\ |\\;|\\:|~|[" + _THIN_SPACES + r"])(?=\d{3}(?!\d))"),
        "",
        "`1\\,000`, `1{,}000`, `2 500` (thin space) are 1000, 2500",
    ),
    (
        "thousands: commas",
        re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])"),
        "<thousands>",
        "`1,000,000` is one number; `1,2` (groups not of 3) stays a list",
    ),
    ("math delimiters", re.compile(r"\$\$|(?<!\\)\$|\\\(|\\\)|\\\[|\\\]"), "", "`$x$`, `\\(x\\)` are x"),
    ("currency", re.compile(r"\\\$|\\(?:textdollar|euro|pounds)\b|[€£¥]"), "", "`\\$18` is 18 (golds carry no unit)"),
    (
        "degrees",
        re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree\b|\\textdegree\b"),
        "",
        "`90^\\circ` is 90 (golds in degrees)",
    ),
    ("percent", re.compile(r"\\?%"), "", "`10\\%` is 10: GSM8K/MATH golds write a percentage as its number"),
    (
        "layout commands",
        re.compile(r"\\(?:displaystyle|left|right|bigl?|bigr?|Bigl?|Bigr?)(?![A-Za-z])"),
        "",
        "sizing only",
    ),
    ("trailing period", re.compile(r"[.\s]+$"), "", "sentence punctuation"),
]


def _to_interval(s: str) -> str:
    """`x > 2` → `(2, \\infty)`, `x \\le -1` → `(-\\infty, -1]`: a one-variable inequality as its interval."""
    m = _INEQ_RE.match(s)
    if not m:
        return s
    op, bound = _INEQ_OPS[m.group(2)], m.group(3).strip()
    if op.startswith(">"):
        return f"{'[' if op == '>=' else '('}{bound},\\infty)"
    return f"(-\\infty,{bound}{']' if op == '<=' else ')'}"


def _strip_unit(s: str) -> str:
    """`18 dollars`, `5 \\text{ cm}^2`, `12 km/h` → the number, when only unit words follow it."""
    wrapped = re.fullmatch(r"\\(?:text|mbox|textrm)\s*\{\s*(-?\d[^{}]*)\}", s)  # `\text{5 inches}`
    if wrapped:
        s = wrapped.group(1)
    m = re.fullmatch(rf"\s*(-?\d+(?:\.\d+)?(?:/\d+)?)((?:{_UNIT})+)\s*", s)
    return m.group(1) if m else s


def normalise(answer: str) -> str:
    """Apply `NORMALISERS`, then unicode, unit, scientific-notation and inequality rewrites."""
    s = answer.translate(_UNICODE)
    for _, pattern, repl, _why in NORMALISERS:
        if repl == "<thousands>":
            s = pattern.sub(lambda m: m.group().replace(",", ""), s)
        else:
            s = pattern.sub(repl, s)
    s = _strip_unit(s.strip())
    sci = _SCI_RE.match(s)
    if sci:
        s = f"{sci.group(1)}\\times10^{{{int(sci.group(2))}}}"
    return _to_interval(s)
