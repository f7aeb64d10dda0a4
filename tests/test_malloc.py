"""vespo_cli/malloc.py: the glibc thresholds are applied at import, and can be turned off."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = "import vespo_cli; print(vespo_cli.MALLOC_TUNED)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
@pytest.mark.parametrize("setting,expected", [(None, "True"), ("0", "False")])
def test_tuning_on_by_default_and_off_by_env(setting, expected, monkeypatch):
    if setting is None:
        monkeypatch.delenv("VESPO_MALLOC_TUNING", raising=False)
    else:
        monkeypatch.setenv("VESPO_MALLOC_TUNING", setting)
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
