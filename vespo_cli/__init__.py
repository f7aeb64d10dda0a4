"""vespo: off-policy RL experiment runner for language models (see README.md).

Importing the package sets nothing process-wide; entry points call `vespo_cli.runtime.configure()`."""
