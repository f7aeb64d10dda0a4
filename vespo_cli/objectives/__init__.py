"""Policy objectives: one pure function per objective, registered by name (equations and sources: docs/objectives.md).

    loss, metrics = policy_loss("vespo", logp, old_logp, advantages, mask,
                                rollout_logp=None, correction=None, num_tokens=None, num_seqs=None,
                                **params)
    loss, metrics = policy_loss(cfg.algorithm.params, logp, ...)  # params validated at config load

Every objective is a reshaped REINFORCE: its gradient is coef_{i,t}·∇logp_t. An objective function
(registered in OBJECTIVES with its params model, a pydantic model in the torch-free
`vespo_cli/objective_params.py`; the config's `algorithm.params` is the union of these models, keyed on
`algorithm.objective`) maps the detached
tensors of a microbatch to its per-token loss value and that coefficient (`Reshaped`); `policy_loss`
does what is shared:
masking, the train-inference mismatch correction (TIS/MIS), aggregation with global denominators
(so gradient accumulation gives the one-big-batch gradient), the autograd hook-up and metrics.

Aggregation (each objective declares one, AGGREGATION[name]; `algorithm.aggregation` overrides it):
  token-mean           Σ_i Σ_t m ℓ / num_tokens            (num_tokens: None = mask.sum())
  seq-mean-token-mean  Σ_i (Σ_t m ℓ / T_i) / num_seqs      (num_seqs:   None = B, all rows)
  seq-mean-token-sum   Σ_i Σ_t m ℓ / num_seqs
With gradient accumulation pass the minibatch totals (tokens, sequences) to every microbatch.

Layout: `base.py` (the registry, `Tokens`, `Reshaped`, shared helpers), `losses.py` (the objectives,
side by side), `loss.py` (`policy_loss` and params validation), `advantages.py` (`group_advantages`);
their names and params models: `vespo_cli/objective_params.py`, re-exported here.
"""

from ..objective_params import (
    CORRECTION_CAP,
    PARAM_MAX,
    PARAMS,
    AnyObjectiveParams,
    CispoParams,
    CorrectionCap,
    GrpoParams,
    GspoParams,
    ObjectiveParams,
    ReinforceParams,
    SapoParams,
    ToprParams,
    VespoParams,
)
from .advantages import group_advantages
from .base import (
    AGGREGATION,
    CORRECTIONS,
    LENGTH_NORMS,
    LN_EPS,
    MAX_LOG,
    OBJECTIVE_DEFAULTS,
    OBJECTIVES,
    SEQUENCE_CORRECTION,
    Reshaped,
    Tokens,
    as_float_mask,
    exp_,
    indicator,
    log_clip_bounds,
    ratio,
    register,
    select,
    vespo_kernel,
)
from .loss import (
    check_correction_cap,
    drift_metrics,
    objective_params,
    policy_loss,
    resolve_params,
)
from .losses import (
    cispo,
    grpo,
    gspo,
    reinforce,
    sapo,
    topr,
    vespo,
)
