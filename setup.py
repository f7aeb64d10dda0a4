"""Build hook: ship the top-level `presets/` tree inside the wheel as `vespo_cli/_presets/`.

Everything else about the package is in pyproject.toml. `presets/` stays at the repository root (where
users look); an installed vespo reads the shipped copy through importlib.resources (`vespo_cli/presets.py`).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PRESETS = Path(__file__).resolve().parent / "presets"


class BuildPyWithPresets(build_py):
    """`build_py`, then the whole presets tree (run presets, algorithms/, claims/, …) copied into the package."""

    def run(self):
        super().run()
        if PRESETS.is_dir() and not getattr(self, "editable_mode", False):
            dest = Path(self.build_lib) / "vespo_cli" / "_presets"
            shutil.rmtree(dest, ignore_errors=True)  # a preset deleted since the last build must not ship
            shutil.copytree(PRESETS, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithPresets})
