"""vespo installed from its built wheel (issue 30): the presets ship inside the package and a tiny run
trains from a directory outside the checkout.

The fresh venv gets the wheel with --no-deps; its heavy dependencies (torch, transformers, …) come from
the project venv through a `.pth` line naming that venv's site-packages, which adds the directory to
sys.path without running its `.pth` files (so the checkout's editable install stays out of it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(UV is None, reason="needs uv (installed by `make setup`)")]


def run(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding vespo from a wheel built by `uv build` (sdist, then the wheel from it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = run(UV, "build", "--out-dir", tmp / "dist", ROOT, cwd=tmp)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("vespo_cli-*.whl")
    venv = tmp / "venv"
    made = run(UV, "venv", "--python", sys.executable, venv, cwd=tmp)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    put = run(UV, "pip", "install", "--python", py, "--no-deps", wheel, cwd=tmp)
    assert put.returncode == 0, put.stderr
    site = run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).stdout.strip()
    Path(site, "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_the_wheel_ships_the_presets_and_trains_outside_the_checkout(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VESPO_PRESETS", "PYTHONPATH")}
    env.update(COLUMNS="200", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    where = run(installed / "python", "-c", "import vespo_cli; print(vespo_cli.__file__)", cwd=tmp_path, env=env)
    assert str(installed.parent) in where.stdout, where.stdout + where.stderr

    listed = run(installed / "vespo", "presets", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    for name in ("tiny", "smollm2-arith", "qwen3-8b", "vespo", "grpo", "cispo"):
        assert f" {name} " in listed.stdout, listed.stdout
    assert "_presets" in listed.stdout
    shipped = run(  # the whole presets tree ships, claims/ included
        installed / "python",
        "-c",
        "from importlib.resources import files; d = files('vespo_cli') / '_presets'; "
        "print(sorted(str(p.relative_to(d)) for p in d.rglob('*.yaml')))",
        cwd=tmp_path,
        env=env,
    )
    assert shipped.stdout.strip() == str(
        sorted(str(p.relative_to(ROOT / "presets")) for p in ROOT.glob("presets/**/*.yaml"))
    )

    trained = run(
        *(installed / "vespo", "train", "--preset", "tiny", "--set", "trainer.steps=1", "--out", "r"),
        cwd=tmp_path,
        env=env,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1]
    # not a terminal: on stdout "loading model …", then one plain line per optimizer step; no library noise
    lines = trained.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("loading model ") and lines[0].endswith(" …"), lines
    assert re.fullmatch(r"train vespo N=2 1/1  reward \S+  loss \S+  \|g\| \S+  \d+\.\ds", lines[1]), lines
    assert trained.stderr.splitlines() == ["run: r  (metrics.jsonl, checkpoints/, rollouts/)"]
