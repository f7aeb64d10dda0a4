"""The trainer: rollout batches → N minibatch updates (staleness N), replay, async, resume, FSDP2."""
