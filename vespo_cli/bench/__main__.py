"""`python -m vespo_cli.bench`: a section or a worker subprocess of `vespo bench`, or the whole suite."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    from .machine import configure_child
    from .memory import PeakRSS

    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    if argv[0] == "section":
        from .section_async import section_async_loop, section_sync_loop
        from .section_ranks import section_ranks
        from .section_rollout import section_rollout
        from .section_train import section_train

        sections = {
            "train": section_train,
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
