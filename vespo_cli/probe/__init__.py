"""`vespo probe`: how much of the true gradient each objective recovers from stale data (issue 17).

The VESPO paper's claim is about estimators: with stale samples, token clipping (GRPO/DAPO) is
biased, sequence-level importance weights (GSPO) have exploding variance, and VESPO's kernel φ(W)
trades the two off. The probe measures it. At θ_K, K optimizer steps after the behaviour policy θ₀
sampled the data D₀, each objective's gradient on D₀ (stale) is compared with its gradient on fresh
samples of the same prompts from θ_K (its own on-policy target) and with the plain policy gradient
(sequence-level REINFORCE with the group-mean baseline), next to the cosine two independent fresh
estimates reach (the noise floor).

Cost: per prompt group, one forward and, per objective, one backward through a stated parameter
subset (the last decoder blocks and the final norm; `gradients.py`); every per-group gradient is
kept as a fixed random projection (`sketch.py`, with its error bound), so every bootstrap resample
of prompt groups is a quadratic form in a Gram matrix of sketches (`bootstrap.py`).

Modules: sketch, bootstrap, gradients (what is computed), command (options and settings), measure
(the loop), samples (its draws and `--shards`), report and plots (output).
"""

from .command import probe_command

__all__ = ["probe_command"]
