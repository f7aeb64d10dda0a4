"""bf16 tolerances derived from the number format and the computation, never fitted to one CPU.

bfloat16 keeps 8 significant bits, so one rounding to nearest has relative error at most the unit
roundoff u = 2^-8 (fp32: 2^-24). Kernels differ between CPUs (AMX, AVX-512 BF16, AVX2 emulation):
they block and order sums differently and may round intermediates at other places, but every one
obeys the two models below, so a tolerance built from them holds on any x86-64 CPU.

* `dot_error`: a worst-case bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002,
  eq. 3.5 with rounded inputs): a length-n dot product of bf16-rounded inputs accumulated in fp32
  in any order is off by at most (2u + u² + γ_n(u_fp32)) Σ|a_i b_i|, γ_n(v) = n v / (1 − n v).
* `chain_rtol`: a quantity reached through k roundings in sequence whose errors are independent (once
  two computations' values differ, every later rounding rounds different numbers) has relative
  standard deviation √(k/3)·u (each error uniform in ±u; the probabilistic model of Higham & Mary,
  SIAM J. Sci. Comput. 2019); the tolerance is `sigmas` of them.
"""

from __future__ import annotations

import math

U_BF16 = 2.0**-8
U_FP32 = 2.0**-24
SIGMAS = 4.0  # a 4σ bound: a false alarm on about 1 in 16 000 independent comparisons

# bf16 roundings along the longest path through one Llama decoder layer, forward: input RMSNorm,
# q/k/v projection, RoPE, QKᵀ, softmax, attention·V, o_proj, residual add, post-attention RMSNorm,
# gate/up projection, SiLU·up, down projection, residual add (13); the backward mirrors it.
LLAMA_LAYER_ROUNDINGS = 13
LLAMA_OUTER_ROUNDINGS = 3  # embedding lookup, final RMSNorm, LM head


def gamma(n: int, u: float = U_FP32) -> float:
    """γ_n = n·u / (1 − n·u): the relative error bound of n sequential roundings (Higham, Lemma 3.1)."""
    return n * u / (1 - n * u)


def dot_error(n: int, abs_dot: float) -> float:
    """Worst-case error of a length-`n` dot product whose inputs were rounded to bf16 and whose
    products are summed in fp32 in any order; `abs_dot` = Σ|a_i b_i| of the unrounded inputs."""
    return (2 * U_BF16 + U_BF16**2 + gamma(n)) * abs_dot


def chain_rtol(roundings: int, sigmas: float = SIGMAS) -> float:
    """Relative tolerance for a quantity reached through `roundings` independent bf16 roundings."""
    return sigmas * math.sqrt(roundings / 3) * U_BF16


def llama_roundings(layers: int, passes: int = 2) -> int:
    """bf16 roundings on the longest path of `passes` (forward, backward) through a Llama of `layers`."""
    return passes * (LLAMA_LAYER_ROUNDINGS * layers + LLAMA_OUTER_ROUNDINGS)
