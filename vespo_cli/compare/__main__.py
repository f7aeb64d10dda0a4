"""`python -m vespo_cli.compare CONFIG RUN_DIR REPLAY RESUME ASYNC`: the trainer child of `sweep.train`."""

import sys

from ..errors import UserError
from ..interrupt import exit_status
from ..runtime import configure
from .sweep import train_child

if __name__ == "__main__":
    configure()
    try:
        train_child(*sys.argv[1:6])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # SIGTERM / SIGINT (interrupt.py): one line, 128 + signum, resumable
        print(str(e) or "interrupted", file=sys.stderr)
        sys.exit(exit_status(e))
