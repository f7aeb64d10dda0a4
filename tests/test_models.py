"""Model specs → checkpoints: deterministic tiny build, atomic cache, errors, the real SmolLM2 conversion."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from vespo_cli import models
from vespo_cli.errors import UserError
from vespo_cli.models import cache_key, load_model, load_tokenizer, resolve_model, state_dict_hash


def _seed_tokenizer(cache_dir) -> None:
    """Pre-fill an empty cache with the (already built) tokenizer dir: building it costs ~10 s."""
    src = models.tokenizer_dir()
    shutil.copytree(src, os.path.join(cache_dir, os.path.basename(src)))


def test_tiny_builds_deterministically(tmp_path, tiny_model_path):
    paths = []
    for name in ("a", "b"):
        _seed_tokenizer(tmp_path / name)
        paths.append(resolve_model("tiny", cache_dir=str(tmp_path / name)))
    hashes = {state_dict_hash(load_model(p)) for p in paths + [tiny_model_path]}
    assert len(hashes) == 1


def test_tiny_checkpoint_contents(tiny_model_path, tokenizer):
    files = os.listdir(tiny_model_path)
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    cfg = json.load(open(os.path.join(tiny_model_path, "config.json")))
    assert cfg["tie_word_embeddings"] is True and cfg["num_hidden_layers"] == 2
    assert cfg["dtype"] == "float32" and cfg["eos_token_id"] == 2
    model = load_model(tiny_model_path)
    assert next(model.parameters()).dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 2
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False
    )
    assert models.eos_token_ids(tiny_model_path) == [2]


def test_cache_is_reused(tmp_path, monkeypatch):
    _seed_tokenizer(tmp_path)
    first = resolve_model("tiny", cache_dir=str(tmp_path))
    mtime = os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns

    def no_rebuild(*a, **k):
        raise AssertionError("rebuilt a cached checkpoint")

    monkeypatch.setattr(models, "_build_tiny", no_rebuild)
    monkeypatch.setattr(models, "_build_tokenizer", no_rebuild)
    assert resolve_model("tiny", cache_dir=str(tmp_path)) == first
    assert os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns == mtime


def test_env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VESPO_CACHE", str(tmp_path))
    assert models.cache_root() == tmp_path / "models"
    monkeypatch.delenv("VESPO_CACHE")
    assert str(models.cache_root()).endswith(os.path.join(".cache", "vespo", "models"))


def test_cache_key_has_version_and_config(monkeypatch):
    key = cache_key("tiny", models.TINY_CONFIG)
    assert key.startswith(f"tiny-v{models.FORMAT_VERSION}-")
    assert cache_key("tiny", {**models.TINY_CONFIG, "hidden_size": 256}) != key
    monkeypatch.setattr(models, "FORMAT_VERSION", models.FORMAT_VERSION + 1)
    assert cache_key("tiny", models.TINY_CONFIG) != key


def test_failed_build_leaves_nothing(tmp_path):
    def half_build(out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the conversion

    with pytest.raises(KeyboardInterrupt):
        models._cached_build(tmp_path, "m-v1", half_build)
    assert not (tmp_path / "m-v1").exists()
    assert not list(tmp_path.glob(".m-v1.tmp-*"))
    # a build killed hard (SIGKILL) leaves its temp dir: the next build removes it
    (tmp_path / ".m-v1.tmp-dead").mkdir()
    out = models._cached_build(tmp_path, "m-v1", lambda o: (o / "config.json").write_text("{}"))
    assert os.path.isfile(os.path.join(out, "config.json"))
    assert not list(tmp_path.glob(".m-v1.tmp-*"))


def test_local_directory_spec(tiny_model_path, tmp_path):
    assert resolve_model(tiny_model_path) == os.path.realpath(tiny_model_path)
    with pytest.raises(UserError, match="config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="safetensors"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("spec", ["no-such-model", "./missing/dir", "smollm9-1t"])
def test_bad_spec_is_user_error(spec):
    with pytest.raises(UserError) as err:
        resolve_model(spec)
    msg = str(err.value)
    assert repr(spec) in msg and "tiny" in msg and "smollm2-135m" in msg and "\n" not in msg


def test_unreachable_hub_id_is_user_error(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match="'someorg/somemodel'.*hub"):
        resolve_model("someorg/somemodel")


def test_bad_dtype_is_user_error():
    with pytest.raises(UserError, match="dtype 'float8'"):
        models.torch_dtype("float8")


@pytest.mark.slow
def test_smollm2_conversion(smollm2_model_path):
    """The GGUF → bf16 safetensors conversion gives the real model: fluent text has low loss."""
    cfg = json.load(open(os.path.join(smollm2_model_path, "config.json")))
    assert cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576 and cfg["tie_word_embeddings"]
    assert "quantization_config" not in cfg
    model = load_model(smollm2_model_path, "bfloat16")
    tok = load_tokenizer(smollm2_model_path)
    assert tok.eos_token_id == 2 and models.eos_token_ids(smollm2_model_path) == [2]
    text = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome."
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        nll = model(ids, labels=ids).loss.item()
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        nll_shuffled = model(shuffled, labels=shuffled).loss.item()
    assert nll < 2.0 < nll_shuffled
