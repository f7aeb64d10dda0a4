"""Would the trainer gain from running each prompt group's prompt once, as the probe does?

    OMP_NUM_THREADS=1 .venv/bin/python reports/bench/trainer_prompt_sharing.py   # → trainer_prompt_sharing.json

One optimizer step's rows shaped like Study II's minibatch (4 prompt groups × 8 responses, a 55-token prompt
of random token ids, responses of 15–47 tokens), SmolLM2-135M, one thread, forward + log-probs + backward:
  planned  the trainer's path: `plan_microbatches` at the preset's 4096-token budget (one microbatch of 32
           rows here) through `token_logprobs`;
  shared   one microbatch per group, its prompt run once (`shared_prompt_hidden`), then `head_logprobs`;
under the trainer's two CPU dtype policies (fp32 weights; fp32 masters with the `bf16_params` compute copy),
interleaved rounds in one process (the first a warm-up), process CPU seconds, medians.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vespo_cli.models import load_model, resolve_model
from vespo_cli.train import precision
from vespo_cli.train.batch import Rows, make_microbatch, plan_microbatches
from vespo_cli.train.forward import decoder_and_head, head_logprobs, shared_prompt_hidden, token_logprobs

GROUPS, SAMPLES, PROMPT, RESPONSE, BUDGET, ROUNDS = 4, 8, 55, (15, 48), 4096, 4


def study_rows() -> Rows:
    gen = torch.Generator().manual_seed(0)
    prompts, responses = [], []
    for _ in range(GROUPS):
        prompt = torch.randint(3, 4000, (PROMPT,), generator=gen).tolist()
        for _ in range(SAMPLES):
            n = int(torch.randint(*RESPONSE, (1,), generator=gen))
            prompts.append(prompt)
            responses.append(torch.randint(3, 4000, (n,), generator=gen).tolist())
    n = len(prompts)
    groups = [str(i // SAMPLES) for i in range(n)]
    return Rows(prompts, responses, [None] * n, torch.zeros(n), torch.zeros(n, dtype=torch.bool), groups,
                torch.zeros(n, dtype=torch.long), ["s"] * n)  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    model = load_model(resolve_model("smollm2-135m"), "float32").train()
    decoder, head = decoder_and_head(model)
    rows = study_rows()
    idx = list(range(len(rows)))
    planned = [make_microbatch(rows, m) for m in plan_microbatches(rows, idx, BUDGET)]
    per_group = [make_microbatch(rows, idx[g * SAMPLES : (g + 1) * SAMPLES]) for g in range(GROUPS)]

    def run_planned() -> None:
        for mb in planned:
            token_logprobs(model, mb, 1.0, True)[0].sum().backward()

    def run_shared() -> None:
        for mb in per_group:
            targets = mb.input_ids[:, 1:][mb.response_mask[:, 1:]]
            head_logprobs(shared_prompt_hidden(decoder, mb, PROMPT), head, targets, 1.0, True)[0].sum().backward()

    ways = {"planned": run_planned, "shared": run_shared}
    result = {"model": "smollm2-135m", "threads": 1, "groups": GROUPS, "samples": SAMPLES, "prompt_tokens": PROMPT}
    result["response_tokens"] = [len(r) for r in rows.response_ids]
    result["microbatches"] = {"planned": len(planned), "shared": len(per_group)}
    result["rounds"] = ROUNDS
    for policy, bf16 in (("fp32", False), ("bf16_params", True)):
        seconds: dict[str, list[float]] = {k: [] for k in ways}
        with precision.bf16_params(model) if bf16 else torch.enable_grad():
            for r in range(ROUNDS + 1):
                for name, step in ways.items():
                    c = time.process_time()
                    step()
                    if r:
                        seconds[name].append(time.process_time() - c)
                model.zero_grad(set_to_none=True)
        medians = {k: statistics.median(v) for k, v in seconds.items()}
        result[policy] = {"cpu_s": medians, "speedup": medians["planned"] / medians["shared"]}
        print(policy, result[policy], flush=True)
    result["machine"] = {"processor": platform.processor() or platform.machine(), "torch": torch.__version__}
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
