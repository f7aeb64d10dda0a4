"""The trainer as it was at a git revision, importable beside the current one, so that a bench section
can time both on the same batch in the same process (issue 33: "measured side by side in one run").

`git archive REV vespo_cli` is unpacked once per revision under the temp dir as the package `vespo_ref_<rev>`: the
trainer's modules import each other relatively, so the copy runs its own step, forward, precision
policy and objectives, and shares nothing with the current tree but torch and transformers."""

from __future__ import annotations

import importlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# main before issue 33's trainer work (2026-12-02): the trainer every cpu-staleness run so far used
STUDY_REFERENCE_REV = "9eca00edc6d31af20756920215eab42703e0d63f"


def reference_step_module(rev: str = STUDY_REFERENCE_REV):
    """`train.step` of the vespo_cli tree at `rev` (from this checkout's git history). Raises
    RuntimeError with git's one-line reason where there is no checkout or no such revision."""
    name = f"vespo_ref_{rev[:10]}"
    if name not in sys.modules:
        root = Path(tempfile.gettempdir()) / f"vespo-ref-{rev}"  # one copy per revision, reused by later runs
        if not (root / name).is_dir():
            _unpack(rev, root, name)
        sys.path.insert(0, str(root))
        try:
            importlib.import_module(name)
        finally:
            sys.path.remove(str(root))  # the package is in sys.modules now; its submodules load from its __path__
    return importlib.import_module(f"{name}.train.step")


def _unpack(rev: str, root: Path, name: str) -> None:
    """`git archive rev vespo_cli` as `root/name`, renamed into place whole (a concurrent run sees all or none)."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev, "vespo_cli"], capture_output=True)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"git archive {rev} in {repo}: {msg[-1] if msg else 'failed'}")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root))
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(staging, filter="data")
    try:
        (staging / "vespo_cli").rename(root / name)
    except OSError:  # another run put it there first
        pass
    shutil.rmtree(staging, ignore_errors=True)


def reference_config(step_module, cfg):
    """`cfg` (this tree's Config) as the reference tree's own Config class, which its objectives and
    trainer check types against; keys the reference does not know (options added since) are left out."""
    package = step_module.__name__.rsplit(".", 2)[0]
    ref_cls = importlib.import_module(f"{package}.config").Config
    return ref_cls.model_validate(_known(cfg.model_dump(), ref_cls))


def _known(data: dict, cls) -> dict:
    """`data` restricted to the fields of pydantic model `cls`, section by section."""
    from pydantic import BaseModel

    out = {}
    for key, value in data.items():
        field = cls.model_fields.get(key)
        if field is None:
            continue
        sub = field.annotation
        nested = isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel)
        out[key] = _known(value, sub) if nested else value
    return out
