"""vespo_cli/runtime.py: process-wide settings are applied by `configure()` (the glibc thresholds of
malloc.py, which can be turned off; environment defaults), and importing the package applies none."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = "from vespo_cli import runtime; print(runtime.configure()['malloc_tuned'])"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
@pytest.mark.parametrize("setting,expected", [(None, "True"), ("0", "False")])
def test_tuning_on_by_default_and_off_by_env(setting, expected, monkeypatch):
    if setting is None:
        monkeypatch.delenv("VESPO_MALLOC_TUNING", raising=False)
    else:
        monkeypatch.setenv("VESPO_MALLOC_TUNING", setting)
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_importing_the_package_changes_no_environment_variable(monkeypatch):
    """Every module an entry point imports, imported: os.environ is as it was; configure() then sets
    the defaults and keeps a value the user set."""
    for key in ("VLLM_ENABLE_V1_MULTIPROCESSING", "TOKENIZERS_PARALLELISM", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")
    code = (
        "import os; before = dict(os.environ)\n"
        "import vespo_cli, vespo_cli.cli, vespo_cli.train.loop, vespo_cli.rollout.run, vespo_cli.rollout.vllm\n"
        "import vespo_cli.rollout.worker, vespo_cli.evaluate, vespo_cli.compare.sweep\n"
        "print(dict(os.environ) == before)\n"
        "from vespo_cli import runtime; runtime.configure()\n"
        "print(os.environ['VLLM_ENABLE_V1_MULTIPROCESSING'], os.environ['VLLM_LOGGING_LEVEL'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "0", "INFO"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_heap_returns_the_free_pages_between_live_blocks():
    """Half of 4,000 64 KiB blocks (below glibc's 128 KiB mmap threshold, so on the heap) freed, every other
    one: the 125 MiB of holes stay resident (free() returns only the heap's top) until release_heap() hands
    their whole pages back (15 or 16 of each hole's 16). Both figures come from the same process."""
    code = (
        "import vespo_cli.malloc as m\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024\n"
        "blocks = [bytearray(65536) for _ in range(4000)]\n"
        "del blocks[::2]\n"
        "before = rss(); released = m.release_heap(); after = rss()\n"
        "print(released, before - after)\n"
    )
    env = {"VESPO_MALLOC_TUNING": "0", "PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    released, freed = out.stdout.split()
    assert released == "True" and int(freed) > 0.75 * 2000 * 65536, out.stdout
