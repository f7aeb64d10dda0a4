"""The bf16 numerics tests hold on other kernels too: re-run a handful of them with oneDNN and ATen
restricted to AVX2 (no AMX, no AVX-512 BF16), as on an older x86-64 CPU. Their tolerances come from
tests/tolerance.py, not from one CPU's rounding, so a machine with different kernels stays green."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
NUMERICS = [
    "tests/test_forward.py::test_bf16_autocast_matches_plain_log_softmax",
    "tests/test_objectives.py::test_low_precision_logp",
    "tests/test_precision.py::test_gradients_are_close_to_fp32_and_add_to_an_existing_grad",
    "tests/test_precision.py::test_gradients_are_the_fp32_sum_of_bf16_microbatch_gradients",
]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 instruction sets")
def test_bf16_numerics_pass_on_avx2_kernels():
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **AVX2, "OMP_NUM_THREADS": "1"}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    capability = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert capability.stdout.strip() == "AVX2"  # the restriction took effect
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NUMERICS],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{len(NUMERICS) + 1} passed" in proc.stdout  # the tied/untied parametrisation: 5 tests
