"""The vespo side of the e2e comparison: vespo's own `train()` in sync mode, paced by the parent."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from .memory import PeakRSS
from .probes import PolicyLossProbe, patch_everywhere
from .protocol import child_protocol
from .sizes import bench_config, sizes

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
    from ..fsio import read_jsonl
    from ..shards import read_shard, write_shard
    from ..train import loop
    from ..train.batch import rows_from_table
    from ..train.metrics import MetricsWriter

    cmds, send = child_protocol(argv)
    rss = PeakRSS()
    sz = sizes(quick)
    cfg = bench_config(sz, engine)
    cfg.trainer.steps = sz["e2e_steps"] + 2  # never "done": no final checkpoint inside the timed span
    cfg.trainer.save_every = 10**9
    run_dir = Path(tempfile.mkdtemp(prefix="vespo-bench-e2e-")) / "run"
    probe = PolicyLossProbe()
    inner = loop.sync_batches
    t_start = time.perf_counter()
    written = {"t": 0.0}
    write = MetricsWriter.write

    def timed_write(self, rec):
        out = write(self, rec)
        written["t"] = time.perf_counter()
        return out

    MetricsWriter.write = timed_write

    def paced(cfg_, run_dir_, state, sampler, *rest):  # rest: sync_batches' other arguments, passed through
        batches = inner(cfg_, run_dir_, state, sampler, *rest)
        send({"setup_s": time.perf_counter() - t_start, "threads": _threads(), "engine": engine})
        prev = None
        while True:
            if prev is not None:
                end = time.perf_counter()
                probe.stop()
                step_s = end - prev[0]
                rec = read_jsonl(run_dir_ / "metrics.jsonl")[-1]
                send(_step_record(rec, prev[1], run_dir_, step_s, end - written["t"], probe))
            if cmds.readline().strip() != "step":
                return
            t0 = time.perf_counter()
            probe.start()
            batch = next(batches)
            prev = (t0, batch)
            yield batch

    def _step_record(rec, batch, run_dir_, step_s, publish_s, probe):
        path = run_dir_ / "rollouts" / batch.shards[0]
        r0 = time.perf_counter()  # shard I/O of this step's batch: read + decode as the loop does, write again
        table = read_shard(path)
        rows = rows_from_table(table)
        r1 = time.perf_counter()
        write_shard(table, run_dir_ / "io-check.parquet")
        w1 = time.perf_counter()
        seq = [len(p) + len(r) for p, r in zip(rows.prompt_ids, rows.response_ids)]
        resp = [len(r) for r in rows.response_ids]
        shard_io_s = float(rec.get("time_shard_io_s") or (w1 - r0))
        objective_s = probe.objective_s()
        return {
            "step_s": step_s,
            **{k: rec[k] for k in ("rollout_s", "logprob_s", "train_s")},
            "parts": _step_parts(rec, step_s, publish_s, shard_io_s),
            "publish_s": publish_s,
            "shard_read_s": r1 - r0,
            "shard_write_s": w1 - r1,
            "shard_bytes": path.stat().st_size,
            "objective_s": objective_s,
            "objective_calls": len(probe.calls),
            "objective_share": objective_s / step_s,
            "rows": len(rows),
            "response_tokens": sum(resp),
            "tokens": sum(seq),
            "completion_mean_length": sum(resp) / len(resp),
            "reward": rec["reward"],
            "load_avg": os.getloadavg()[0],
        }

    patch_everywhere(inner, paced)
    loop.train(cfg, run_dir)
    send(rss.report())


def _threads() -> int:
    import torch

    return torch.get_num_threads()
