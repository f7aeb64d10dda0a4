"""Rollout with vLLM in-process (CPU backend on laptops, CUDA on GPUs).

Traps handled here (each met on vLLM's CPU backend):
  * the engine must run in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so weights can be pushed;
  * a KV cache size is required on CPU (`kv_cache_memory_bytes`);
  * engine creation seeds the global RNGs and replaces `torch.set_num_threads` with a no-op: the
    caller's RNG states and `set_num_threads` are saved and restored around it (and around every
    call into the engine, since unseeded sampling would draw from the global torch RNG);
  * on CPU, seeded requests crash when a prefill is chunked: chunked prefill is turned off there;
  * a weight update needs `reload_weights`, then a repack of the tied lm_head (CPU vLLM keeps its
    own packed copy of it), then `reset_prefix_cache()`; otherwise the engine silently keeps
    sampling from the old weights.
"""

from __future__ import annotations

import contextlib
import os
import random

import torch

from vespo_cli.errors import UserError
from vespo_cli.rollout.base import Completion, Sampling, request_seed
from vespo_cli.rollout.hf import _validate


@contextlib.contextmanager
def guard_global_state():
    """Restore the python/numpy/torch global RNGs and `torch.set_num_threads` on exit."""
    set_threads = torch.set_num_threads
    py_state = random.getstate()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover
        np, np_state = None, None
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        random.setstate(py_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if np is not None:
            np.random.set_state(np_state)


def _repack_tied_lm_head(worker) -> None:
    """CPU vLLM packs lm_head weights for its GEMM at load time; with tied embeddings the reload
    refreshes only embed_tokens, so the packed head would stay stale. Re-derive it (idempotent)."""
    model = worker.model_runner.model
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)


class VLLMEngine:
    """The `Engine` interface over an in-process `vllm.LLM`."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        seed: int = 0,
        max_model_len: int | None = None,
        kv_cache_bytes: int = 256 * 2**20,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enforce_eager: bool | None = None,
        num_threads: int | None = None,
        trust_remote_code: bool = False,
        **llm_kwargs,
    ):
        from vespo_cli.runtime import configure

        configure()  # before vLLM is imported: its engine in this process (weights handed over in memory)
        try:
            from vllm import LLM
        except ImportError as exc:
            raise UserError(
                f"rollout.engine=vllm: vllm is not importable ({exc}); use --set rollout.engine=hf"
            ) from None
        on_gpu = torch.cuda.is_available()
        if max_model_len is None:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
            max_model_len = min(int(getattr(cfg, "max_position_embeddings", 2048) or 2048), 4096)
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))  # must precede engine creation (it binds threads)
        kwargs = dict(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            seed=int(seed),
            max_model_len=int(max_model_len),
            tensor_parallel_size=int(tensor_parallel_size),
            enforce_eager=(not on_gpu) if enforce_eager is None else bool(enforce_eager),
            trust_remote_code=trust_remote_code,
            use_tqdm_on_load=False,  # no weight-loading bars in a job's log ("loading model …" says it)
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
        else:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_bytes)
            # A chunked (partial) prefill makes the CPU runner rewind the per-request generator of a
            # seeded request with `gen.set_offset(...)`, which CPU generators do not support
            # ("RuntimeError: CPU Generator does not use offset"). Prefill whole prompts instead.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(int(max_model_len), 4096)
        kwargs.update(llm_kwargs)
        with guard_global_state():
            self.llm = LLM(**kwargs)
        self.dtype = dtype
        self.max_model_len = int(max_model_len)
        self.tokenizer = self.llm.get_tokenizer()
        self._seed_stream = random.Random(int(seed))  # seeds for Sampling(seed=None)

    # -- weights --------------------------------------------------------------------------------

    def _after_reload(self) -> None:
        self.llm.collective_rpc(_repack_tied_lm_head)
        self.llm.reset_prefix_cache()  # cached prefixes hold KV computed with the old weights

    def load_weights(self, checkpoint_dir: str) -> None:
        if not os.path.isdir(checkpoint_dir):
            raise UserError(f"{checkpoint_dir}: not a directory (expected an HF checkpoint directory)")
        with guard_global_state():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(checkpoint_dir)})
            self._after_reload()

    def load_state_dict(self, state_dict) -> None:
        """Push HF-named tensors (a dict or an iterable of (name, tensor) pairs) into the engine."""
        from vespo_cli.models import torch_dtype

        items = state_dict.items() if hasattr(state_dict, "items") else state_dict
        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:  # cast here: vLLM would cast too, with a warning per tensor
            dtype = torch_dtype(self.dtype)
        except UserError:  # "auto" etc.: let vLLM cast
            dtype = None
        weights = (  # cast one tensor at a time, as vLLM loads it: never a second copy of the whole model
            (name, t.detach().to(device=device, dtype=dtype if dtype and t.is_floating_point() else t.dtype))
            for name, t in items
        )
        with guard_global_state():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
            self._after_reload()

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
        import gc

        gc.collect()

    # -- sampling -------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], n: int, sampling: Sampling) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        _validate(sampling, n)
        for i, p in enumerate(prompts):
            if not p:
                raise UserError("rollout: empty prompt (expected at least one token)")
            if len(p) >= self.max_model_len:
                raise UserError(
                    f"rollout: prompt {i} has {len(p)} tokens; expected fewer than max_model_len={self.max_model_len}"
                )
        seed = sampling.seed if sampling.seed is not None else self._seed_stream.randrange(2**31)
        top_k = sampling.top_k if sampling.top_k and sampling.top_k > 0 else 0
        params = [
            SamplingParams(
                n=n,
                logprobs=0,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=top_k,
                max_tokens=sampling.max_tokens,
                seed=request_seed(int(seed), sampling.prompt_offset + i),
            )
            for i in range(len(prompts))
        ]
        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        with guard_global_state():
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
        completions = []
        for i, (p, req) in enumerate(zip(prompts, outputs)):
            for j, o in enumerate(sorted(req.outputs, key=lambda o: o.index)):
                ids = list(o.token_ids)
                logps = [float(o.logprobs[t][tok].logprob) for t, tok in enumerate(ids)]
                completions.append(
                    Completion(
                        prompt_index=i,
                        sample_idx=j,
                        prompt_token_ids=list(p),
                        response_token_ids=ids,
                        rollout_logprobs=logps,
                        finish_reason="stop" if o.finish_reason == "stop" else "length",
                        text=o.text,
                    )
                )
        return completions
