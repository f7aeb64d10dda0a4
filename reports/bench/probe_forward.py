"""The probe's forward per prompt group: the full right-padded forward (`response_hidden`) against the prompt
run once for the group (`shared_prompt_hidden`), on SmolLM2-135M in fp32 (the probe's dtype), one thread, with
and without the gradient to the last 2 blocks (the probe's subset), interleaved rounds in one process.

    python reports/bench/probe_forward.py     # writes reports/bench/probe_forward.json

The group is shaped like Study II's: a 55-token prompt (random token ids) and 8 responses of 15-22 tokens.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vespo_cli.models import load_model, resolve_model
from vespo_cli.probe.gradients import gradient_subset
from vespo_cli.train.batch import Rows, make_microbatch
from vespo_cli.train.forward import decoder_and_head, response_hidden, shared_prompt_hidden

PROMPT, RESPONSES, ROUNDS = 55, (19, 15, 22, 18, 19, 21, 17, 20), 6


def main() -> None:
    torch.set_num_threads(1)
    model = load_model(resolve_model("smollm2-135m"), "float32").eval()
    decoder, _ = decoder_and_head(model)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 4000, (PROMPT,), generator=gen).tolist()
    responses = [torch.randint(3, 4000, (n,), generator=gen).tolist() for n in RESPONSES]
    n = len(responses)
    rows = Rows([prompt] * n, responses, [None] * n, torch.zeros(n), torch.zeros(n, dtype=torch.bool), ["g"] * n,
                torch.zeros(n, dtype=torch.long), ["s"] * n)  # fmt: skip
    mb = make_microbatch(rows, list(range(n)))
    ways = {"full": lambda: response_hidden(decoder, mb), "shared": lambda: shared_prompt_hidden(decoder, mb, PROMPT)}
    result = {"model": "smollm2-135m", "dtype": "float32", "threads": 1, "prompt_tokens": PROMPT}
    result["response_tokens"], result["rounds"] = list(RESPONSES), ROUNDS
    for grad in (False, True):
        seconds: dict[str, list[float]] = {k: [] for k in ways}
        with gradient_subset(model, 2) as params, torch.set_grad_enabled(grad):
            for r in range(ROUNDS + 1):  # round 0 warms up
                for name, forward in ways.items():
                    t = time.perf_counter()
                    h = forward()
                    if grad:
                        torch.autograd.grad(h.sum(), params)
                    if r:
                        seconds[name].append(time.perf_counter() - t)
        key = "forward_backward" if grad else "forward"
        result[key] = {k: statistics.median(v) for k, v in seconds.items()}
        result[f"{key}_speedup"] = result[key]["full"] / result[key]["shared"]
    result["machine"] = {"processor": platform.processor() or platform.machine(), "torch": torch.__version__}
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
