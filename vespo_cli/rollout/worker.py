"""An async rollout worker as its own process: `python -m vespo_cli.rollout.worker RUN --worker wK`.

`vespo train --async` starts trainer.async_workers of them through `start_worker`; each runs
`rollout.run.rollout_follow` (the loop `vespo rollout --follow RUN` runs on other machines) and stops
when the run writes DONE or its trainer (VESPO_TRAINER_PID, its parent) has died."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ..rundir import RunDir


def start_worker(run_dir: Path, worker: str) -> subprocess.Popen:
    """Start worker `worker` on `run_dir`, its output appended to the run's log of that worker."""
    log_path = RunDir(run_dir).worker_log(worker)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VESPO_TRAINER_PID": str(os.getpid())}  # the worker exits if this process dies
    cmd = [sys.executable, "-m", "vespo_cli.rollout.worker", str(run_dir), "--worker", worker]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def main(argv: list[str] | None = None) -> int:
    """Run one worker; a bad input or a fault of the machine ends it with one line and exit 2 or 1."""
    from .. import runtime
    from ..errors import UserError, describe_os_error
    from .run import rollout_follow

    parser = argparse.ArgumentParser(prog="python -m vespo_cli.rollout.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--worker", default="w0")
    args = parser.parse_args(argv)
    runtime.configure()
    try:
        rollout_follow(args.run_dir, worker=args.worker)
    except (UserError, OSError) as e:
        print(f"error: {describe_os_error(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 1 if isinstance(e, OSError) else e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
