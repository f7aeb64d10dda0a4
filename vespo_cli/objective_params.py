"""The objectives' names and hyperparameters, without torch: one pydantic params model per objective
(defaults: the paper's), `PARAMS` (name → its model), their union `AnyObjectiveParams` (the config's
`algorithm.params`, keyed on `algorithm.objective`) and C of TIS/MIS (`CORRECTION_CAP`, `CorrectionCap`).

The config validates against these when it loads, so a bad `--set` fails before torch is imported; the
objective functions themselves (`objectives/losses.py`) register under the same names."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import ConfigDict, Field

from .schema import Section

CORRECTION_CAP = 2.0  # C of TIS/MIS, the default of algorithm.correction_cap
CorrectionCap = Annotated[float, Field(gt=1.0, le=1e6)]  # its range, for the config and `policy_loss`
PARAM_MAX = 1e3  # upper bound of the free positive hyperparameters (clip widths, temperatures)


class ObjectiveParams(Section):
    """An objective's hyperparameters (defaults: the paper's), validated once when the config loads.

    A read-only mapping of the objective function's keyword arguments: `fn(tokens, **params)`.
    `objective` is the tag of the config's union (set from `algorithm.objective`, never written)."""

    model_config = ConfigDict(frozen=True)
    objective: str = Field(exclude=True)

    def keys(self) -> list[str]:
        return [k for k in type(self).model_fields if k != "objective"]

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.keys() else default


class VespoParams(ObjectiveParams):
    """Kernel exponents (c1, c2) for A ≥ 0 and A < 0, and the length-normalisation ablation of log W."""

    objective: Literal["vespo"] = Field("vespo", exclude=True)
    c1_pos: float = Field(2.0, ge=0, le=100)
    c2_pos: float = Field(3.0, ge=0, le=100)
    c1_neg: float = Field(3.0, ge=0, le=100)
    c2_neg: float = Field(2.0, ge=0, le=100)
    length_norm: Literal["none", "sqrt", "linear"] = "none"


class GrpoParams(ObjectiveParams):
    """Clip range [1 − eps_low, 1 + eps_high] of the token ratio; dual clip c for A < 0 (null: none)."""

    objective: Literal["grpo"] = Field("grpo", exclude=True)
    eps_low: float = Field(0.2, ge=0, le=1)
    eps_high: float = Field(0.28, ge=0, le=PARAM_MAX)
    dual_clip: float | None = Field(3.0, gt=1, le=1e6)


class GspoParams(ObjectiveParams):
    """Clip range [1 − eps_low, 1 + eps_high] of the length-normalised sequence ratio."""

    objective: Literal["gspo"] = Field("gspo", exclude=True)
    eps_low: float = Field(3e-4, ge=0, le=1)
    eps_high: float = Field(4e-4, ge=0, le=PARAM_MAX)


class SapoParams(ObjectiveParams):
    """Gate temperatures τ for A > 0 and A ≤ 0."""

    objective: Literal["sapo"] = Field("sapo", exclude=True)
    tau_pos: float = Field(1.0, gt=0, le=PARAM_MAX)
    tau_neg: float = Field(1.05, gt=0, le=PARAM_MAX)


class CispoParams(ObjectiveParams):
    """Clip range [1 − eps_low, 1 + eps_high] of the detached token weight (eps_low ≥ 1: no lower clip)."""

    objective: Literal["cispo"] = Field("cispo", exclude=True)
    eps_low: float = Field(10.0, ge=0, le=PARAM_MAX)
    eps_high: float = Field(0.2, ge=0, le=PARAM_MAX)


class ToprParams(ObjectiveParams):
    """TOPR has no hyperparameters."""

    objective: Literal["topr"] = Field("topr", exclude=True)


class ReinforceParams(ObjectiveParams):
    """REINFORCE has no hyperparameters."""

    objective: Literal["reinforce"] = Field("reinforce", exclude=True)


# name -> its params model, in the order the objectives are registered (objectives/losses.py)
PARAMS: dict[str, type[ObjectiveParams]] = {
    p.model_fields["objective"].default: p
    for p in (VespoParams, GrpoParams, GspoParams, SapoParams, CispoParams, ToprParams, ReinforceParams)
}
# every objective's params, keyed on the objective's name (the config's `algorithm.params`)
AnyObjectiveParams = Annotated[Union[tuple(PARAMS.values())], Field(discriminator="objective")]  # noqa: UP007
