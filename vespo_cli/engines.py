"""The rollout engines by name: what `rollout.engine`, `--engine` and the plan accept.

`rollout/` opens them (`rollout.make_engine`); the table is here, below both, so that the config knows
the names without importing the engines' package."""

from __future__ import annotations

# name → "module:class". A new engine (e.g. SGLang) is one file implementing `rollout.base.Engine` and one
# line here; the config, the CLI and the plan take the names from this table.
REGISTRY = {
    "vllm": "vespo_cli.rollout.vllm:VLLMEngine",
    "hf": "vespo_cli.rollout.hf:HFEngine",
}
ENGINES = tuple(REGISTRY)
