"""Claims as data: a claims file (YAML) says what a compare tests, in which form, on which endpoint and
with which margin, before any run is read (`presets/claims/vespo-paper.yaml` is the default).

    family: vespo-paper          # the multiplicity family: every claim row with data is Holm-adjusted together
    endpoint: final_eval         # default endpoint of the claims (final_eval | eval_auc | final_reward)
    claims:
      - claim: "VESPO loses less than GRPO as N grows"
        form: interaction        # [A(N) − A(ref)] − [B(N) − B(ref)] > margin
        a: vespo
        b: grpo
        at: highest              # the N values of the comparison: highest (common), each, or a list
        margin: 0.0

Forms (rows are judged in `verdict.py`):
- `noninferior`: A(N) − B(ref) > −margin (B defaults to A, ref to A's lowest N; `ref_n: same` compares
  at the same N, e.g. A = vespo+async against B = vespo);
- `degrades`: the mirror, A(N) − A(ref) < −margin (a loss larger than the margin);
- `interaction`: [A(N) − A(ref)] − [B(N) − B(ref)] > margin;
- `difference`: A(N) − B(N) > margin;
- `collapse`: A's collapse rate below B's at the same N (Boschloo's exact test on the counts).
`margin_relative: δ` instead of `margin` scales the margin by the reference level: the noninferior test is
then A(N) − (1 − δ)·B(ref) > 0 (A keeps at least 1 − δ of the reference), which stays on the endpoint's scale.
`a` and `b` are group labels; `b` may be a glob (`vespo+length_norm=*`): one row per matching label.

`planned_seeds` (optional) is the study's planned sample size: `4` (every N) or `{1: 4, 16: 4, 32: 3}` (per N;
an N not named has no plan). A row whose groups have fewer seeds than planned is **interim**, not judged
(`verdict.py`); `vespo compare --planned-seeds` sets or overrides it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from ..errors import UserError
from ..presets import PRESETS_DIR, read_yaml
from ..schema import Section, fail, user_error

FORMS = ("noninferior", "degrades", "interaction", "difference", "collapse")
ENDPOINTS = ("final_eval", "eval_auc", "final_reward")
DEFAULT_CLAIMS = "vespo-paper"


class Claim(Section):
    claim: str = Field(min_length=1)  # what the paper (or the study) says, in words
    form: Literal["noninferior", "degrades", "interaction", "difference", "collapse"]
    a: str = Field(min_length=1)  # group label of the method the claim is about
    b: str | None = None  # the baseline (a label or a glob); noninferior/degrades: default a
    at: Literal["highest", "each"] | list[int] = "highest"  # N values of A
    ref_n: int | Literal["lowest", "same"] = "lowest"  # the reference N (noninferior, degrades, interaction)
    endpoint: Literal["final_eval", "eval_auc", "final_reward"] | None = None  # default: the file's
    margin: float = Field(0.0, ge=0.0, le=1.0)
    margin_relative: float | None = Field(None, gt=0.0, lt=1.0)
    why: str = ""  # the margin's justification (also written as a comment beside it)

    @model_validator(mode="after")
    def _check(self):
        if self.form in ("interaction", "difference", "collapse") and self.b is None:
            raise fail(f"form {self.form} needs a baseline `b`", "b")
        if self.margin_relative is not None and self.form not in ("noninferior", "degrades"):
            raise fail("margin_relative applies to the noninferior and degrades forms only", "margin_relative")
        if self.margin_relative is not None and self.margin:
            raise fail("give margin or margin_relative, not both", "margin")
        return self


class ClaimsFile(Section):
    family: str = Field(min_length=1)  # the name of the multiplicity family
    description: str = ""
    endpoint: Literal["final_eval", "eval_auc", "final_reward"] = "final_eval"
    alpha: float = Field(0.05, gt=0.0, lt=0.5)  # family-wise error rate (Holm), two-sided tests
    power: float = Field(0.8, gt=0.0, lt=1.0)  # power at which the minimum detectable effect is stated
    planned_seeds: int | dict[int, int] | None = None  # seeds per (arm, N) the study plans: every N, or per N
    claims: list[Claim] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_plan(self):
        plan = self.planned_seeds
        counts = [] if plan is None else list(plan.values()) + list(plan) if isinstance(plan, dict) else [plan]
        if any(k < 1 for k in counts):
            raise fail("expected whole numbers of at least 1 (seeds, or N: seeds)", "planned_seeds")
        return self

    def planned(self, override: dict[int | None, int] | None = None) -> dict[int | None, int]:
        """{N: seeds}, the key None standing for every N (see planned_at in verdict.py): the file's plan, with
        `override` (`--planned-seeds`) over it."""
        plan = self.planned_seeds
        own = {} if plan is None else dict(plan) if isinstance(plan, dict) else {None: plan}
        return {**own, **(override or {})}


def parse_planned_seeds(values: list[str]) -> dict[int | None, int]:
    """`--planned-seeds` values: "K" (every N) or "N=K" (at staleness N) → {N or None: K}."""
    plan: dict[int | None, int] = {}
    for v in values:
        n, _, k = v.rpartition("=")
        try:
            key, count = (int(n) if n else None), int(k)
        except ValueError:
            raise UserError(f"--planned-seeds {v}: expected K or N=K (whole numbers), e.g. 4 or 32=3") from None
        if count < 1 or (key is not None and key < 1):
            raise UserError(f"--planned-seeds {v}: N and K must be at least 1")
        plan[key] = count
    return plan


def claims_path(name_or_path: str | None) -> Path:
    """A claims file by name (`presets/claims/<name>.yaml`) or path; default DEFAULT_CLAIMS."""
    spec = name_or_path or DEFAULT_CLAIMS
    p = Path(spec)
    if p.suffix in (".yaml", ".yml") or "/" in spec:
        if not p.is_file():
            raise UserError(f"{spec}: claims file not found")
        return p
    p = PRESETS_DIR / "claims" / f"{spec}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(q.stem for q in (PRESETS_DIR / "claims").glob("*.yaml"))) or "none"
        raise UserError(f"--claims {spec}: unknown claims file (known: {known})")
    return p


def load_claims(name_or_path: str | None = None) -> tuple[ClaimsFile, Path]:
    """The validated claims file and its path; one-line UserError naming the file and key otherwise."""
    path = claims_path(name_or_path)
    try:
        return ClaimsFile.model_validate(read_yaml(path)), path
    except ValidationError as e:
        raise user_error(e, ClaimsFile, lambda _: str(path)) from None


def claims_commit(path: Path) -> dict:
    """{"commit", "modified"}: the last git commit of the claims file and whether the file differs from it (a
    pre-registered analysis names the commit its claims were fixed at); nulls outside a git checkout."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=path.parent, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("log", "-1", "--format=%H", "--", path.name) or None
    modified = git("status", "--porcelain", "--", path.name)
    return {"commit": commit, "modified": bool(modified) if commit else None}
