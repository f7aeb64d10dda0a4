"""`python -m vespo_cli.bench`: a section or a worker subprocess of `vespo bench`, or the whole suite."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

USAGE = (
    "usage: python -m vespo_cli.bench OUT_DIR [--quick]            (the whole suite; `vespo bench` is the command)\n"
    "       python -m vespo_cli.bench section NAME OUT.json [--quick]\n"
    "       python -m vespo_cli.bench render OUT_DIR                    (latest.md again from latest.json)\n"
    "       python -m vespo_cli.bench worker {vespo,trl}-{hf,vllm} ...  (the suite's subprocesses)"
)
SECTIONS = ("train", "study", "rollout", "sync_loop", "async_loop", "ranks")


def _check(argv: list[str]) -> None:
    """One line and exit 2 for anything but the forms of USAGE (an option is not an output dir)."""
    ok = (
        (argv[:1] == ["section"] and len(argv) == 3 and argv[1] in SECTIONS)
        or (argv[:1] == ["worker"] and len(argv) >= 2)
        or (argv[:1] == ["render"] and len(argv) == 2)
        or (len(argv) == 1 and argv[0] not in ("section", "worker", "render") and not argv[0].startswith("-"))
    )
    if not ok:
        print(USAGE, file=sys.stderr)
        sys.exit(0 if argv in (["--help"], ["-h"]) else 2)


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    _check(argv)
    if argv[0] == "render":
        from .suite import rerender

        rerender(Path(argv[1]))
        return
    from .machine import configure_child
    from .memory import PeakRSS

    if argv[0] == "section":
        from .section_async import section_async_loop, section_sync_loop
        from .section_ranks import section_ranks
        from .section_rollout import section_rollout
        from .section_study import section_study
        from .section_train import section_train

        sections = {
            "train": section_train,
            "study": section_study,
            "rollout": section_rollout,
            "sync_loop": section_sync_loop,
            "async_loop": section_async_loop,
            "ranks": section_ranks,
        }
        configure_child()
        rss = PeakRSS()
        result = sections[argv[1]](quick)
        result.update(rss.report())
        Path(argv[2]).write_text(json.dumps(result))
    elif argv[0] == "worker":
        from .worker_trl import worker_trl
        from .worker_vespo import worker_vespo

        configure_child()
        side, engine = argv[1].split("-")
        {"vespo": worker_vespo, "trl": worker_trl}[side](argv[2:], quick, engine)
    else:
        from .suite import run_bench

        run_bench(Path(argv[0]), quick=quick)
    sys.stdout.flush()
    os._exit(0)  # vLLM / TRL leave non-daemon threads behind


if __name__ == "__main__":
    main(sys.argv[1:])
