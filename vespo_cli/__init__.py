"""vespo: off-policy RL experiment runner for language models (see README.md)."""

from .malloc import tune_malloc

MALLOC_TUNED = tune_malloc()  # every entry point (CLI, compare children, bench workers) imports this first
