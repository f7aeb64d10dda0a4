"""The vespo side of the e2e comparison: vespo's own `train()` in sync mode, paced by the parent."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .probes import PolicyLossProbe, patch_everywhere
from .protocol import WorkerSide

# the trainer's per-step timing metrics (train/), in the figure's order; older trainers log only
# rollout_s, logprob_s, sync_s and train_s, read as a fallback
STEP_PARTS = ("rollout", "old_logprob", "forward", "backward", "optimizer", "publish", "shard_io", "other")


def _step_parts(rec: dict, step_s: float, publish_s: float, shard_io_s: float) -> dict:
    """Seconds of each STEP_PARTS part of one step, from its metrics line and the bench's own timings."""
    if "time_forward_s" in rec:
        parts = {p: float(rec.get(f"time_{p}_s") or 0.0) for p in STEP_PARTS[:-1]}
        parts["rollout"] = max(parts["rollout"] - shard_io_s, 0.0)  # the trainer's rollout time holds the shard I/O
        parts["shard_io"] = shard_io_s
        parts["publish"] = publish_s  # this step's own publish (the trainer logs it with the next step)
    else:  # forward, backward and optimizer as one "train" part
        parts = {
            "rollout": max(rec["rollout_s"] - shard_io_s, 0.0),
            "old_logprob": rec["logprob_s"],
            "train": rec["train_s"],
            "publish": publish_s,
            "shard_io": shard_io_s,
        }
    parts["other"] = max(step_s - sum(parts.values()), 0.0)
    return parts


def worker_vespo(argv: list[str], quick: bool, engine: str) -> None:
    """vespo's `train()` (sync mode: `engine`, RewardScorer, optimizer step, weight publish), paced by
    the parent: the loop's rollout-batch source is wrapped so that each batch (= one optimizer step at
    staleness 1) is sampled only on a "step" command. A step is timed from that command to the loop's
    request for the next batch: sample + score + shard write/read, old-logp, optimizer step, weight
    publish, metrics line. policy_loss's inputs are captured during the step and timed after it."""
    # imported before the setup clock starts, as always: setup_s counts the setup, not the imports
    from .. import fsio, shards  # noqa: F401
    from ..train import loop
    from ..train.batch import rows_from_table  # noqa: F401
    from ..train.metrics import MetricsWriter  # noqa: F401

    side = WorkerSide(argv, quick, engine)
    side.cfg.trainer.steps = side.sz["e2e_steps"] + 2  # never "done": no final checkpoint inside the timed span
    side.cfg.trainer.save_every = 10**9
    run_dir = Path(tempfile.mkdtemp(prefix="vespo-bench-e2e-")) / "run"
    pacer = Pacer(side, loop.sync_batches, PolicyLossProbe(), t_start=time.perf_counter())
    _stamp_metrics_writes(pacer)
    patch_everywhere(pacer.inner, pacer)
    loop.train(side.cfg, run_dir)
    side.send_peak_rss()


def _stamp_metrics_writes(pacer: Pacer) -> None:
    """Every metrics line the trainer writes stamps `pacer.written` (perf_counter) when written: a step's
    weight publish is what the loop does between that line and its request for the next batch."""
    from ..train.metrics import MetricsWriter

    write = MetricsWriter.write

    def timed_write(self, rec):
        out = write(self, rec)
        pacer.written = time.perf_counter()
        return out

    MetricsWriter.write = timed_write


class Pacer:
    """The loop's `sync_batches`, replaced: sends the setup record on the loop's first request, then
    samples a batch only on a "step" command and, at the loop's next request, sends that step's record
    (`_step_record`); returns (ending the run) on "stop"."""

    def __init__(self, side: WorkerSide, inner, probe: PolicyLossProbe, t_start: float):
        self.side, self.inner, self.probe = side, inner, probe
        self.t_start = t_start  # perf_counter when the worker's setup began
        self.written = 0.0  # perf_counter when the trainer last wrote a metrics line

    def __call__(self, cfg, run_dir: Path, state, sampler, *rest):  # rest: sync_batches' other arguments
        batches = self.inner(cfg, run_dir, state, sampler, *rest)
        self.side.send_setup(self.t_start, engine=self.side.engine)
        prev = None
        while True:
            if prev is not None:
                self._send_step(run_dir, *prev)
            if not self.side.wants_step():
                return
            t0 = time.perf_counter()
            self.probe.start()
            batch = next(batches)
            prev = (t0, batch)
            yield batch

    def _send_step(self, run_dir: Path, t0: float, batch) -> None:
        from ..fsio import read_jsonl
        from ..rundir import RunDir

        end = time.perf_counter()
        self.probe.stop()
        step_s = end - t0
        rec = read_jsonl(RunDir(run_dir).metrics)[-1]
        self.side.send_step(_step_record(rec, batch, run_dir, step_s, end - self.written, self.probe))


def _shard_io(path: Path, scratch: Path):
    """Shard I/O of one step's batch: read + decode `path` as the loop does, write it again to `scratch`;
    (rows, read seconds, write seconds)."""
    from ..shards import read_shard, write_shard
    from ..train.batch import rows_from_table

    r0 = time.perf_counter()
    table = read_shard(path)
    rows = rows_from_table(table)
    r1 = time.perf_counter()
    write_shard(table, scratch)
    w1 = time.perf_counter()
    return rows, r1 - r0, w1 - r1


def _step_record(rec: dict, batch, run_dir: Path, step_s: float, publish_s: float, probe: PolicyLossProbe) -> dict:
    """One step's record from its metrics line `rec`, the batch's shard I/O and the policy_loss calls."""
    path = run_dir / "rollouts" / batch.shards[0]
    rows, read_s, write_s = _shard_io(path, run_dir / "io-check.parquet")
    seq = [len(p) + len(r) for p, r in zip(rows.prompt_ids, rows.response_ids)]
    resp = [len(r) for r in rows.response_ids]
    shard_io_s = float(rec.get("time_shard_io_s") or (read_s + write_s))
    objective_s = probe.objective_s()
    return {
        "step_s": step_s,
        **{k: rec[k] for k in ("rollout_s", "logprob_s", "train_s")},
        "parts": _step_parts(rec, step_s, publish_s, shard_io_s),
        "publish_s": publish_s,
        "shard_read_s": read_s,
        "shard_write_s": write_s,
        "shard_bytes": path.stat().st_size,
        "objective_s": objective_s,
        "objective_calls": len(probe.calls),
        "objective_share": objective_s / step_s,
        "rows": len(rows),
        "response_tokens": sum(resp),
        "tokens": sum(seq),
        "completion_mean_length": sum(resp) / len(resp),
        "reward": rec["reward"],
    }
