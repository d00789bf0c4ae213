"""One valid example call for every public function and class of ``course_utils``.

The census (``census_engine.py``) derives the bad calls from these; ``test_bad_input_census.py``
fails when a public name has no entry here, so a new function cannot skip the census. An entry
lists what the census may not judge alone:

* ``accept``: bad-looking inputs that are in fact valid, each with a one-line reason;
* ``known``: failures in files whose owners have not fixed them yet (value: the owner);
* ``skip``: arguments that are not inputs (the label a check helper puts in its message).

``record(name, reason)`` registers a name that takes no input worth fuzzing (no arguments, an
exception class, a result record the course builds from checked values).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from census_engine import Call, entry, record
from torch import nn


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def softmax(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(randn(*shape, seed=seed), dim=-1)


SHAPE_FREE = "elementwise: any shape is valid"
ANY_SEED = "any non-negative int is a seed"
FREE_TEXT = "free text (a label, a description)"


# =============================================================================================
# course_utils.rl
# =============================================================================================
from course_utils import rl  # noqa: E402


@entry("course_utils.rl.compute_gae")
def _():
    rewards = torch.tensor([1.0, 0.5, 1.0, 2.0])
    values = torch.tensor([0.5, 0.2, 0.1, 0.3, 0.4])
    no = torch.zeros(4, dtype=torch.bool)
    return Call(rl.compute_gae, rewards, values, no, torch.tensor([False, True, False, False]),
                gamma=0.9, lam=0.95)


@entry("course_utils.rl.ppo_loss", accept={
    "logits:float64,values:float64": "documented: the loss is computed in float32 (the logits may "
                                     "be bf16/fp16 under autocast)",
    "logits:size": "any number of actions"})
def _():
    return Call(rl.ppo_loss, randn(4, 3), torch.tensor([0, 2, 1, 1]), randn(4, seed=1) - 1.0,
                randn(4, seed=2), randn(4, seed=3), randn(4, seed=4), clip=0.2, vf_coef=0.5,
                ent_coef=0.01, normalize_advantages=True)


@entry("course_utils.rl.PPOConfig")
def _():
    return Call(rl.PPOConfig, total_steps=512, num_envs=4, rollout_len=64, epochs=1)


@entry("course_utils.rl.MLPPolicy", accept={"obs_scale:empty": "no scale: every divisor 1"})
def _():
    return Call(rl.MLPPolicy, obs_dim=2, n_actions=2, frames=2, hidden=8)


@entry("course_utils.rl.MLPPolicy.forward",
       accept={"obs:inf": "tanh saturates: the network's limit at an infinite input"})
def _():
    policy = rl.MLPPolicy(obs_dim=2, n_actions=2, frames=2, hidden=8)
    return Call(policy.forward, randn(3, 2, 2), torch.ones(3, 2, dtype=torch.bool))


@entry("course_utils.rl.AttentionPolicy", accept={"obs_scale:empty": "no scale: every divisor 1"})
def _():
    return Call(rl.AttentionPolicy, obs_dim=2, n_actions=2, window=4, d_model=8, nhead=2,
                dim_feedforward=16, hidden=8)


@entry("course_utils.rl.AttentionPolicy.forward")
def _():
    policy = rl.AttentionPolicy(obs_dim=2, n_actions=2, window=4, d_model=8, nhead=2,
                                dim_feedforward=16, hidden=8)
    return Call(policy.forward, randn(3, 4, 2), torch.ones(3, 4, dtype=torch.bool))


@entry("course_utils.rl.HistoryBuffer", accept={"device:None": "torch's default device"})
def _():
    return Call(rl.HistoryBuffer, num_envs=2, window=3, obs_dim=2)


@entry("course_utils.rl.HistoryBuffer.push")
def _():
    buf = rl.HistoryBuffer(num_envs=2, window=3, obs_dim=2)
    buf.reset(randn(2, 2))
    return Call(buf.push, randn(2, 2, seed=1), torch.tensor([False, True]))


@entry("course_utils.rl.make_vector_env")
def _():
    return Call(rl.make_vector_env, 2, blank_prob=0.1)


@entry("course_utils.rl.NoVelocityObservation")
def _():
    import gymnasium as gym

    return Call(rl.NoVelocityObservation, gym.make("CartPole-v1"))


@entry("course_utils.rl.BlankedObservation")
def _():
    import gymnasium as gym

    return Call(rl.BlankedObservation, rl.NoVelocityObservation(gym.make("CartPole-v1")), 0.2)


@entry("course_utils.rl.evaluate", accept={"seed:zero": ANY_SEED})
def _():
    return Call(rl.evaluate, rl.MLPPolicy(obs_dim=2, n_actions=2, hidden=8), episodes=2,
                greedy=True, seed=3, blank_prob=0.0, max_steps=5)


@entry("course_utils.rl.record_episode", accept={"seed:zero": ANY_SEED})
def _():
    policy = rl.AttentionPolicy(obs_dim=2, n_actions=2, window=4, d_model=8, nhead=2,
                                dim_feedforward=16, hidden=8)
    return Call(rl.record_episode, policy, seed=3, blank_prob=0.0, max_steps=4)


@entry("course_utils.rl.train_ppo", slow=True, accept={"seed:zero": ANY_SEED,
                                                       "desc:*": FREE_TEXT})
def _():
    cfg = rl.PPOConfig(total_steps=64, num_envs=2, rollout_len=32, epochs=1, minibatch_size=32)
    return Call(rl.train_ppo, rl.MLPPolicy(obs_dim=2, n_actions=2, hidden=8), cfg, seed=1,
                desc="PPO", progress=False)


record("course_utils.rl.TrainResult", "a result record that train_ppo builds")


# =============================================================================================
# course_utils.vit
# =============================================================================================
from course_utils import vit  # noqa: E402


@entry("course_utils.vit.patchify")
def _():
    return Call(vit.patchify, randn(2, 3, 4, 4), 2)


@entry("course_utils.vit.PatchEmbedding")
def _():
    return Call(vit.PatchEmbedding, image_size=8, patch_size=4, in_channels=1, dim=16)


@entry("course_utils.vit.PatchEmbedding.forward", names={"x": "images"})
def _():
    emb = vit.PatchEmbedding(image_size=8, patch_size=4, in_channels=1, dim=16)
    return Call(emb.forward, randn(2, 1, 8, 8), method="unfold")


@entry("course_utils.vit.ConvStem", accept={"channels:empty": "no convolution: the identity "
                                                     "(ViT's default conv_stem=())"})
def _():
    return Call(vit.ConvStem, 1, (4, 8))


@entry("course_utils.vit.TokenMixingMLP")
def _():
    return Call(vit.TokenMixingMLP, num_tokens=5, hidden_dim=8, dropout=0.1)


@entry("course_utils.vit.TokenMixingMLP.forward",
       accept={"query:size": "any width E: the tokens are mixed per channel"})
def _():
    return Call(vit.TokenMixingMLP(num_tokens=5, hidden_dim=8).forward, randn(2, 5, 16))


def _vit(**kw):
    return vit.ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=2,
                   heads=2, mlp_dim=32, **kw)


@entry("course_utils.vit.ViT", accept={"num_classes:zero": "documented: no head, the class "
                                                          "token's features",
                                      "conv_stem:empty": "documented: no conv stem"})
def _():
    return Call(vit.ViT, image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=2,
                heads=2, mlp_dim=32, dropout=0.1, layer_norm_eps=1e-6, token_mixing="attention",
                conv_stem=(4,))


@entry("course_utils.vit.ViT.forward", names={"x": "images"})
def _():
    return Call(_vit().forward, randn(2, 1, 8, 8))


@entry("course_utils.vit.ViT.attention_maps", names={"x": "images"})
def _():
    return Call(_vit().attention_maps, randn(2, 1, 8, 8))


@entry("course_utils.vit.attention_rollout")
def _():
    return Call(vit.attention_rollout, softmax(2, 3, 4, 5, 5), residual=0.5)


@entry("course_utils.vit.random_shift", accept={
    "images:nan,images:inf": "the shift may move that pixel out of the frame (zeros come in)",
    "images:size": "any image size", "max_shift:zero": "documented: no shift"})
def _():
    return Call(vit.random_shift, randn(2, 1, 4, 4), max_shift=1,
                generator=torch.Generator().manual_seed(0))


@entry("course_utils.vit.count_parameters")
def _():
    return Call(vit.count_parameters, nn.Linear(3, 2))


# =============================================================================================
# course_utils.results, files, checkpoint, download, display
# =============================================================================================
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from course_utils import checkpoint, display, download, files, results  # noqa: E402

_TMP_ROOT: list[Path] = []  # one folder per process for every call's files, removed at exit


def tmpdir() -> Path:
    """A fresh folder for one valid call's files, inside this process's census folder (removed
    when the process ends, so a census run leaves nothing behind in the system's temp folder)."""
    if not _TMP_ROOT:
        import atexit
        import shutil

        _TMP_ROOT.append(Path(tempfile.mkdtemp(prefix="census-calls-")))
        atexit.register(shutil.rmtree, _TMP_ROOT[0], ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="call-", dir=_TMP_ROOT[0]))


for _name in ("reports_dir", "metrics_path", "recording", "measuring"):
    record(f"course_utils.results.{_name}", "takes no argument")
record("course_utils.results.TargetMissed", "an exception class the course raises")

RESULT_RULES = dict(
    accept={"unit:unknown": FREE_TEXT, "name:unknown": FREE_TEXT, "notebook:unknown": FREE_TEXT,
            "*:negative": "a result may be negative (a loss difference, a log-likelihood)",
            "unit:empty": "no unit", "target:zero,value:zero": "zero is a number",
            "value:nan,value:inf": "shown as it is (record_result counts it as a missed target)"},
    # a value that misses its target (NaN included) is TargetMissed naming the result: its job
    documented=(results.TargetMissed,), names={"value": "accuracy"},
)


@entry("course_utils.results.check_target", **RESULT_RULES)
def _():
    return Call(results.check_target, "accuracy", 0.99, 0.98, higher_is_better=True)


@entry("course_utils.results.describe_result", **RESULT_RULES)
def _():
    return Call(results.describe_result, "accuracy", 0.9876, 0.95, higher_is_better=True, unit="%")


@entry("course_utils.results.record_result", **RESULT_RULES)
def _():
    return Call(results.record_result, "accuracy", 0.9876, 0.95, higher_is_better=True, unit="%",
                notebook="census", full_mode_only=False, timing=False)


@entry("course_utils.results.check_real_number", skip={"what": "the label of the message"},
       names={"x": "value"}, accept={"x:nan,x:inf,x:negative": "a real number (NaN and "
                                     "infinities are misses for check_target, not type errors)"})
def _():
    return Call(results.check_real_number, "value", 0.5)


@entry("course_utils.results.load_metrics")
def _():
    path = tmpdir() / "metrics.json"
    path.write_text('{"results": []}\n', encoding="utf-8")
    return Call(results.load_metrics, path)


@entry("course_utils.files.atomic_write_text", accept={"text:*": "any text"})
def _():
    return Call(files.atomic_write_text, tmpdir() / "a.txt", "hello", encoding="utf-8")


@entry("course_utils.files.atomic_write_bytes")
def _():
    return Call(files.atomic_write_bytes, tmpdir() / "a.bin", b"hello")


@entry("course_utils.files.atomic_write_json", skip={"indent": "passed to json.dumps as is"},
       accept={"data:*": "any JSON value (None, a string, an empty dict)"})
def _():
    return Call(files.atomic_write_json, tmpdir() / "a.json", {"bleu": 92.4}, indent=2)


@entry("course_utils.files.atomic_write_many", accept={"contents:empty": "nothing to write"})
def _():
    d = tmpdir()
    return Call(files.atomic_write_many, {d / "a.txt": "A", d / "b.bin": b"B"})


@entry("course_utils.files.atomic_open")
def _():
    def write(path=None, mode="wb", encoding=None):
        with files.atomic_open(path, mode, encoding) as f:
            f.write(b"data" if mode == "wb" else "data")
        return Path(path).read_bytes()

    write.__signature__ = __import__("inspect").signature(files.atomic_open)
    return Call(write, tmpdir() / "a.bin", "wb")


def _saved_checkpoint() -> Path:
    path = tmpdir() / "ckpt.pt"
    model = nn.Linear(2, 1)
    checkpoint.save_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1), step=3,
                               config={"lr": 0.1})
    return path


CKPT_RULES = {"config:empty,extra:empty": "no config, no extras",
              "step:zero": "step 0: saved before training",
              "model_state:empty,optimizer_state:empty": "a model without parameters",
              "model_class:unknown": "a label stored with the weights"}


@entry("course_utils.checkpoint.save_checkpoint", accept=CKPT_RULES)
def _():
    model = nn.Linear(2, 1)
    return Call(checkpoint.save_checkpoint, tmpdir() / "ckpt.pt", model,
                torch.optim.SGD(model.parameters(), lr=0.1), config={"lr": 0.1},
                extra={"note": "x"}, step=3)


@entry("course_utils.checkpoint.save_state", accept=CKPT_RULES)
def _():
    model = nn.Linear(2, 1)
    return Call(checkpoint.save_state, tmpdir() / "ckpt.pt", model_state=model.state_dict(),
                optimizer_state=torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
                model_class="Linear", config={"lr": 0.1}, extra={"note": "x"}, step=3)


@entry("course_utils.checkpoint.load_checkpoint", documented=(FileNotFoundError,))
def _():
    model = nn.Linear(2, 1)
    return Call(checkpoint.load_checkpoint, _saved_checkpoint(), model,
                torch.optim.SGD(model.parameters(), lr=0.1), map_location="cpu", strict=True)


@entry("course_utils.checkpoint.compare_state_dicts",
       accept={"*:empty": "an empty state dict: every key is missing or unexpected"})
def _():
    return Call(checkpoint.compare_state_dicts, nn.Linear(2, 1).state_dict(),
                nn.Linear(2, 2).state_dict())


record("course_utils.checkpoint.versions", "takes no argument")
record("course_utils.checkpoint.CheckpointMismatchError", "an exception class the course raises")
record("course_utils.download.ChecksumError", "an exception class the course raises")
record("course_utils.download.DownloadError", "an exception class the course raises")


def _source_file() -> Path:
    src = tmpdir() / "src.txt"
    src.write_text("Go.\tVa !\n", encoding="utf-8")
    return src


@entry("course_utils.download.sha256_file", documented=(FileNotFoundError,))
def _():
    return Call(download.sha256_file, _source_file())


@entry("course_utils.download.verify_file", documented=(FileNotFoundError,))
def _():
    src = _source_file()
    return Call(download.verify_file, src, download.sha256_file(src))


@entry("course_utils.download.fetch", documented=(download.DownloadError,),
       names={"url": "could not download"})
def _():
    src = _source_file()
    return Call(download.fetch, src.as_uri(), src.parent / "cache" / "fra.txt",
                download.sha256_file(src), timeout=10.0, overwrite=True, progress=False)


@entry("course_utils.display.figure_title")
def _():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_title("queries")
    return Call(display.figure_title, fig)


record("course_utils.display.describe_figures", "takes no argument")


# =============================================================================================
# course_utils.datasets.digits
# =============================================================================================
from course_utils.datasets import digits  # noqa: E402

record("course_utils.datasets.digits.available", "takes no argument")
record("course_utils.datasets.digits.default_data_root", "takes no argument")
record("course_utils.datasets.digits.DigitsSplit", "a result record that load_digits_split builds")


@entry("course_utils.datasets.digits.load_digits_split", accept={"seed:zero": ANY_SEED})
def _():
    return Call(digits.load_digits_split, test_size=0.25, seed=1)


@entry("course_utils.datasets.digits.load_mnist", documented=(FileNotFoundError,))
def _():
    # no MNIST files here: the valid call is the one that says where to put them
    def load(root=None, name="mnist", train=True):
        try:
            return digits.load_mnist(root, name, train)
        except FileNotFoundError as exc:
            return str(exc).split(":")[0]

    load.__signature__ = __import__("inspect").signature(digits.load_mnist)
    return Call(load, tmpdir(), "mnist", True)


# =============================================================================================
# The spine: attention, positional, transformer, efficient, kv_cache, decoding, triton, monitor
# =============================================================================================
from course_utils import attention as A  # noqa: E402
from course_utils import decoding as DEC  # noqa: E402
from course_utils import efficient as EF  # noqa: E402
from course_utils import kv_cache as KV  # noqa: E402
from course_utils import monitor as MON  # noqa: E402
from course_utils import positional as P  # noqa: E402
from course_utils import transformer as T  # noqa: E402
from course_utils import triton_attention as TRI  # noqa: E402

ATTN_NAN = ("NaN/inf in q, k or v reaches only the outputs that attend to it (the course's tested "
            "policy, tests/properties/test_fuzz_api.py): here a masked or saturated position")
QKV_RULES = dict(
    accept={"q:float64,k:float64,v:float64": "float64 promoted",
            "*:empty": "an empty batch gives an empty result",
            "q:nan,q:inf,k:nan,k:inf,v:nan,v:inf": ATTN_NAN,
            "v:size": "values may have another width Dv than the keys",
            "attn_mask:float dtype": "documented: a float mask is added to the scores",
            "scale:negative": "any real scale (the fuzz tests' convention)"},
)
ZERO_LEN = "documented: 0 queries or keys give an empty result"


@entry("course_utils.attention.causal_mask", accept={"lq:zero,lk:zero": ZERO_LEN})
def _():
    return Call(A.causal_mask, 3, 4, device="cpu", offset=1)


@entry("course_utils.attention.padding_mask_to_attn_mask",
       accept={"key_padding_mask:rank+": "any leading dims broadcast",
               "key_padding_mask:size": "any number of keys"})
def _():
    return Call(A.padding_mask_to_attn_mask, torch.tensor([[False, False, True]]))


@entry("course_utils.attention.masked_softmax", accept={
    "scores:rank*,scores:size": SHAPE_FREE, "mask:rank-": "a mask broadcasts",
    "mask:float dtype": "a float mask is added to the scores (documented)",
    "dim:zero": "any dim of the scores",
    "scores:nan,scores:inf": "the NaN sits at a masked position: masked scores are not read"})
def _():
    return Call(A.masked_softmax, randn(2, 3, 4), torch.rand(3, 4) > 0.3, dim=-1)


@entry("course_utils.attention.scaled_dot_product_attention", **QKV_RULES)
def _():
    return Call(A.scaled_dot_product_attention, randn(2, 3, 4), randn(2, 5, 4, seed=1),
                randn(2, 5, 6, seed=2), torch.rand(3, 5) > 0.3, causal=False, dropout_p=0.0,
                scale=0.5, return_weights=True)


@entry("course_utils.attention.AdditiveAttention")
def _():
    return Call(A.AdditiveAttention, 4, 6, 8, value_dim=5, dropout=0.1)


@entry("course_utils.attention.AdditiveAttention.forward", accept={
    "values:size": "values may have any width", "query:inf,keys:inf": "tanh saturates"})
def _():
    att = A.AdditiveAttention(4, 6, 8)
    return Call(att.forward, randn(2, 3, 4), randn(2, 5, 6, seed=1), randn(2, 5, 7, seed=2),
                torch.tensor([[False] * 5, [False, False, False, True, True]]))


@entry("course_utils.attention.split_heads", accept={
    "x:rank+": "(..., T, E) with one more leading dim: documented, and merge_heads undoes it"})
def _():
    return Call(A.split_heads, randn(2, 3, 8), 2)


@entry("course_utils.attention.merge_heads", accept={
    "x:size": "any head dim D",
    "x:rank+,x:rank-": "(..., H, T, D) with any leading dims (none too): documented, the "
                       "inverse of split_heads"})
def _():
    return Call(A.merge_heads, randn(2, 2, 3, 4))


@entry("course_utils.attention.repeat_kv", accept={"x:size": "any head dim D"})
def _():
    return Call(A.repeat_kv, randn(2, 2, 3, 4), 2)


@entry("course_utils.attention.MultiHeadAttention")
def _():
    return Call(A.MultiHeadAttention, 8, 2, dropout=0.1, bias=True, kdim=6, vdim=5,
                batch_first=True, use_sdpa=False)


@entry("course_utils.attention.MultiHeadAttention.forward", accept={"layer:*": "layer is read only with a cache (none here)"})
def _():
    mha = A.MultiHeadAttention(8, 2)
    return Call(mha.forward, randn(2, 3, 8), randn(2, 4, 8, seed=1), randn(2, 4, 8, seed=2),
                key_padding_mask=torch.tensor([[False] * 4, [False, False, True, True]]),
                need_weights=True)


@entry("course_utils.attention.grouped_query_attention", **QKV_RULES)
def _():
    return Call(A.grouped_query_attention, randn(2, 4, 3, 8), randn(2, 2, 5, 8, seed=1),
                randn(2, 2, 5, 8, seed=2), causal=True, scale=0.3, return_weights=True)


@entry("course_utils.attention.GroupedQueryAttention")
def _():
    return Call(A.GroupedQueryAttention, 16, 4, 2, bias=True, head_dim=8, dropout=0.1)


@entry("course_utils.attention.GroupedQueryAttention.forward", accept={"layer:*": "layer is read only with a cache (none here)"})
def _():
    gqa = A.GroupedQueryAttention(16, 4, 2)
    return Call(gqa.forward, randn(2, 3, 16), is_causal=True,
                key_padding_mask=torch.tensor([[False] * 3, [False, False, True]]))


@entry("course_utils.positional.sinusoidal_table")
def _():
    return Call(P.sinusoidal_table, 10, 8)


@entry("course_utils.positional.SinusoidalPositionalEncoding")
def _():
    return Call(P.SinusoidalPositionalEncoding, 8, max_len=10, dropout=0.1)


@entry("course_utils.positional.SinusoidalPositionalEncoding.forward")
def _():
    return Call(P.SinusoidalPositionalEncoding(8, max_len=10).forward, randn(2, 3, 8), offset=2)


@entry("course_utils.positional.LearnedPositionalEmbedding")
def _():
    return Call(P.LearnedPositionalEmbedding, 10, 8)


@entry("course_utils.positional.LearnedPositionalEmbedding.forward")
def _():
    return Call(P.LearnedPositionalEmbedding(10, 8).forward, randn(2, 3, 8), offset=2)


@entry("course_utils.positional.rotate_half", accept={"x:rank+,x:rank-": SHAPE_FREE})
def _():
    return Call(P.rotate_half, randn(2, 3, 4))


@entry("course_utils.positional.apply_rotary")
def _():
    return Call(P.apply_rotary, randn(2, 3, 4), randn(3, 4, seed=1), randn(3, 4, seed=2))


@entry("course_utils.positional.RotaryEmbedding")
def _():
    return Call(P.RotaryEmbedding, 8, base=10000.0)


@entry("course_utils.positional.RotaryEmbedding.forward",
       accept={"positions:negative,positions:huge": "RoPE is defined at every integer position"})
def _():
    return Call(P.RotaryEmbedding(4).forward, randn(2, 3, 4), torch.tensor([2, 3, 4]))


@entry("course_utils.positional.alibi_slopes")
def _():
    return Call(P.alibi_slopes, 4)


@entry("course_utils.positional.alibi_bias", accept={"lq:zero,lk:zero": ZERO_LEN})
def _():
    return Call(P.alibi_bias, 4, 3, 5, offset=2, device="cpu", dtype=torch.float32)


def _encoder_layer(**kw):
    return T.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, **kw)


def _decoder_layer(**kw):
    return T.TransformerDecoderLayer(8, 2, dim_feedforward=16, dropout=0.0, **kw)


@entry("course_utils.transformer.TransformerEncoderLayer")
def _():
    return Call(T.TransformerEncoderLayer, 8, 2, dim_feedforward=16, dropout=0.1,
                activation="gelu", layer_norm_eps=1e-5, batch_first=True, norm_first=True,
                bias=True)


@entry("course_utils.transformer.TransformerEncoderLayer.forward")
def _():
    return Call(_encoder_layer().forward, randn(2, 3, 8), src_key_padding_mask=torch.tensor(
        [[False] * 3, [False, False, True]]), is_causal=True)


@entry("course_utils.transformer.TransformerDecoderLayer")
def _():
    return Call(T.TransformerDecoderLayer, 8, 2, dim_feedforward=16, dropout=0.1,
                activation="relu", layer_norm_eps=1e-5, batch_first=True, norm_first=False,
                bias=True)


@entry("course_utils.transformer.TransformerDecoderLayer.forward")
def _():
    return Call(_decoder_layer().forward, randn(2, 3, 8), randn(2, 4, 8, seed=1),
                memory_key_padding_mask=torch.tensor([[False] * 4, [False, False, True, True]]),
                tgt_is_causal=True)


@entry("course_utils.transformer.TransformerEncoder")
def _():
    return Call(T.TransformerEncoder, _encoder_layer(), 2, norm=nn.LayerNorm(8))


@entry("course_utils.transformer.TransformerEncoder.forward")
def _():
    return Call(T.TransformerEncoder(_encoder_layer(), 2).forward, randn(2, 3, 8),
                src_key_padding_mask=torch.tensor([[False] * 3, [False, False, True]]))


@entry("course_utils.transformer.TransformerDecoder")
def _():
    return Call(T.TransformerDecoder, _decoder_layer(), 2, norm=nn.LayerNorm(8))


@entry("course_utils.transformer.TransformerDecoder.forward")
def _():
    return Call(T.TransformerDecoder(_decoder_layer(), 2).forward, randn(2, 3, 8),
                randn(2, 4, 8, seed=1), tgt_is_causal=True)


@entry("course_utils.transformer.TransformerDecoder.step")
def _():
    dec = T.TransformerDecoder(_decoder_layer(), 2).eval()
    memory = randn(2, 4, 8, seed=1)
    return Call(dec.step, randn(2, 1, 8), dec.new_cache(2, 5), dec.project_memory(memory))


@entry("course_utils.efficient.naive_attention", **QKV_RULES)
def _():
    return Call(EF.naive_attention, randn(2, 3, 4), randn(2, 5, 4, seed=1),
                randn(2, 5, 6, seed=2), causal=False,
                key_padding_mask=torch.tensor([[False] * 5, [False, False, False, True, True]]),
                scale=0.5)


@entry("course_utils.efficient.online_softmax", accept={"x:rank*,x:size": SHAPE_FREE})
def _():
    return Call(EF.online_softmax, randn(2, 7), block=3)


@entry("course_utils.efficient.tiled_attention", **QKV_RULES)
def _():
    return Call(EF.tiled_attention, randn(2, 3, 4), randn(2, 5, 4, seed=1), randn(2, 5, 6, seed=2),
                causal=True, scale=0.5, block_q=2, block_k=2)


@entry("course_utils.efficient.grouped_query_attention", **QKV_RULES)
def _():
    return Call(EF.grouped_query_attention, randn(2, 4, 3, 8), randn(2, 2, 5, 8, seed=1),
                randn(2, 2, 5, 8, seed=2), causal=False)


@entry("course_utils.efficient.GroupedQueryAttention")
def _():
    return Call(EF.GroupedQueryAttention, 16, 4, 2)


@entry("course_utils.efficient.repeat_kv", accept={"x:size": "any head dim D"})
def _():
    return Call(EF.repeat_kv, randn(2, 2, 3, 4), 3)


@entry("course_utils.efficient.cached_self_attention", names={"x": "query"})
def _():
    mha = A.MultiHeadAttention(8, 2).eval()
    cache = KV.KVCache(1, batch=2, num_heads=2, head_dim=4, max_len=6)
    return Call(EF.cached_self_attention, mha, randn(2, 3, 8), cache, layer=0)


@entry("course_utils.efficient.KVCache")
def _():
    return Call(EF.KVCache, 2, 2, 2, 4, 8, dtype=torch.float32, device="cpu")


@entry("course_utils.kv_cache.KVCache")
def _():
    return Call(KV.KVCache, 2, 2, 2, 4, 8, dtype=torch.float32, device="cpu")


@entry("course_utils.kv_cache.KVCache.update")
def _():
    cache = KV.KVCache(2, 2, 2, 4, 8)
    return Call(cache.update, 0, randn(2, 2, 3, 4), randn(2, 2, 3, 4, seed=1))


@entry("course_utils.kv_cache.KVCache.reorder")
def _():
    cache = KV.KVCache(2, 2, 2, 4, 8)
    cache.update(0, randn(2, 2, 3, 4), randn(2, 2, 3, 4, seed=1))
    return Call(cache.reorder, torch.tensor([1, 0]))


record("course_utils.kv_cache.KVCacheBase", "an abstract base class (KVCache is fuzzed)")


def _decoder_lm():
    torch.manual_seed(0)
    return EF.DecoderLM(11, d_model=8, nhead=2, num_layers=1, max_len=16).eval()


@entry("course_utils.efficient.DecoderLM")
def _():
    return Call(EF.DecoderLM, 11, d_model=8, nhead=2, num_layers=1, dim_feedforward=16,
                max_len=16)


@entry("course_utils.efficient.DecoderLM.generate", accept={
    "start:size": "a longer prompt", "steps:zero": "zero steps: the prompt itself"})
def _():
    return Call(_decoder_lm().generate, randn(2, 4, 8), torch.tensor([[1], [2]]), 3,
                use_cache=True)


@entry("course_utils.efficient.peak_memory_mb", slow=True)
def _():
    return Call(EF.peak_memory_mb, "tiled", 32, b=1, h=1, d=8, threads=1, device="cpu")


@entry("course_utils.efficient.peak_memory_table", slow=True)
def _():
    return Call(EF.peak_memory_table, ["none"], [16], b=1, h=1, d=8, threads=1, device="cpu",
                progress=False, parallel=1)


@entry("course_utils.monitor.peak_memory_mb", slow=True)
def _():
    return Call(MON.peak_memory_mb, "tiled", 32, b=1, h=1, d=8, threads=1, device="cpu")


@entry("course_utils.monitor.peak_memory_table", slow=True)
def _():
    return Call(MON.peak_memory_table, ["none"], [16], b=1, h=1, d=8, threads=1, device="cpu",
                progress=False, parallel=1)


record("course_utils.monitor.rss_mb", "takes no argument")


@entry("course_utils.monitor.PeakMemory")
def _():
    return Call(MON.PeakMemory, "cpu", interval=0.001)


@entry("course_utils.monitor.Monitor")
def _():
    return Call(MON.Monitor, interval=0.01)


@entry("course_utils.monitor.Monitor.plot", accept={"title:*": FREE_TEXT})
def _():
    mon = MON.Monitor(interval=0.01)
    with mon:
        sum(range(1000))
    return Call(mon.plot, "Resource use")


@entry("course_utils.decoding.filter_top_k", accept={"logits:rank*,logits:size": SHAPE_FREE})
def _():
    return Call(DEC.filter_top_k, randn(2, 5), 2)


@entry("course_utils.decoding.filter_top_p", accept={"logits:rank*,logits:size": SHAPE_FREE})
def _():
    return Call(DEC.filter_top_p, randn(2, 5), 0.7)


@entry("course_utils.decoding.sample_next", accept={"logits:size": "any vocabulary size"})
def _():
    return Call(DEC.sample_next, randn(2, 5), temperature=0.8, top_k=3, top_p=0.9,
                generator=torch.Generator().manual_seed(0))


@entry("course_utils.decoding.gnmt_length_penalty", names={"alpha": "length_penalty"},
       accept={"lengths:rank*,lengths:size,lengths:huge": "elementwise: lengths of any shape"})
def _():
    return Call(DEC.gnmt_length_penalty, torch.tensor([1, 7]), 0.6)


@entry("course_utils.decoding.reorder_state", accept={
    "state:*": "documented: None and other values stay as they are",
    "index:size": "an index may repeat rows (beam expansion)"})
def _():
    return Call(DEC.reorder_state, {"h": randn(2, 3), "n": 3}, torch.tensor([1, 1, 0]))


def _step(vocab: int = 7):
    table = randn(vocab, vocab, seed=5)

    def step(tokens, state):
        return table[tokens[:, -1]], state

    return step


DECODE_RULES = {"tokens:huge": "the decoder does not know the vocabulary: the step reads the tokens",
                "tokens:size": "a longer prompt", "state:*": "the state is the step's own, opaque",
                "max_new_tokens:zero": "zero new tokens: the prompt itself",
                "eos:zero": "any token id may end a sequence"}


@entry("course_utils.decoding.greedy", accept=DECODE_RULES)
def _():
    return Call(DEC.greedy, _step(), torch.tensor([[1, 2], [3, 4]]), None, max_new_tokens=4,
                eos=2, pad=0, suppress=(5,))


@entry("course_utils.decoding.sample", accept=DECODE_RULES)
def _():
    return Call(DEC.sample, _step(), torch.tensor([[1, 2], [3, 4]]), None, max_new_tokens=4,
                temperature=0.8, top_k=4, top_p=0.9, generator=torch.Generator().manual_seed(0),
                eos=2, pad=0, suppress=(5,))


@entry("course_utils.decoding.beam_search", accept=DECODE_RULES)
def _():
    return Call(DEC.beam_search, _step(), torch.tensor([[1, 2], [3, 4]]), None, max_new_tokens=4,
                beam_width=3, length_penalty=0.6, eos=2, pad=0, suppress=(5,))


record("course_utils.decoding.DecodeResult", "a result record that the decoders build")
record("course_utils.decoding.Step", "a typing protocol (the step function's signature)")


@entry("course_utils.triton_attention.attention_flops")
def _():
    return Call(TRI.attention_flops, 2, 4, 16, 16, 8, causal=True)


if torch.cuda.is_available() and TRI.triton_available()[0]:
    @entry("course_utils.triton_attention.flash_attention_triton", **QKV_RULES)
    def _():
        q, k, v = (randn(1, 2, 16, 16, seed=i).cuda() for i in range(3))
        return Call(TRI.flash_attention_triton, q, k, v, causal=True, scale=0.25, block_m=16,
                    block_n=16)
else:
    record("course_utils.triton_attention.flash_attention_triton",
           "runs only on a CUDA GPU with Triton (census it there)")


record("course_utils.triton_attention.kernel_source", "takes no argument")
record("course_utils.triton_attention.triton_available", "takes no argument")


# =============================================================================================
# course_utils.gpt and datasets.pydoc_text
# =============================================================================================
from course_utils import gpt as G  # noqa: E402
from course_utils.datasets import pydoc_text as PT  # noqa: E402


def _gpt(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    return G.GPT(G.GPTConfig(**{**cfg, **kw})).eval()


def _llama_cfg():
    return G.LlamaStyleConfig(vocab_size=11, n_layer=1, n_head=2, n_kv_head=1, n_embd=8,
                              head_dim=4, intermediate_size=12)


def _llama():
    torch.manual_seed(0)
    return G.LlamaGPT(_llama_cfg()).eval()


@entry("course_utils.gpt.LayerNorm")
def _():
    return Call(G.LayerNorm, 8, eps=1e-5, bias=True)


@entry("course_utils.gpt.LayerNorm.forward")
def _():
    return Call(G.LayerNorm(8).forward, randn(2, 3, 8))


@entry("course_utils.gpt.RMSNorm")
def _():
    return Call(G.RMSNorm, 8, eps=1e-6)


@entry("course_utils.gpt.RMSNorm.forward")
def _():
    return Call(G.RMSNorm(8).forward, randn(2, 3, 8))


@entry("course_utils.gpt.gelu_tanh", accept={"x:rank*,x:size": SHAPE_FREE})
def _():
    return Call(G.gelu_tanh, randn(2, 3))


@entry("course_utils.gpt.GPTBlock")
def _():
    return Call(G.GPTBlock, 8, 2, 16, dropout=0.1, norm_first=True, norm="rmsnorm",
                layer_norm_eps=1e-5, bias=True)


@entry("course_utils.gpt.GPTConfig")
def _():
    return Call(G.GPTConfig, vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8,
                dropout=0.1, bias=True, positions="rope", norm_first=True, norm="layernorm",
                layer_norm_eps=1e-5, max_positions=64)


@entry("course_utils.gpt.GPT")
def _():
    return Call(G.GPT, G.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))


@entry("course_utils.gpt.GPT.forward", accept={"tokens:size": "a longer sequence (still within the model's positions)"})
def _():
    return Call(_gpt().forward, torch.tensor([[1, 2, 3], [4, 5, 6]]))


@entry("course_utils.gpt.next_token_loss",
       accept={"logits:size": "a larger vocabulary: the targets are still in it"})
def _():
    return Call(G.next_token_loss, randn(2, 3, 5), torch.tensor([[1, 2, 3], [4, 0, 1]]),
                reduction="mean")


@entry("course_utils.gpt.gpt_from_hf")
def _():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    return Call(G.gpt_from_hf, hf)


@entry("course_utils.gpt.gpt_to_hf")
def _():
    return Call(G.gpt_to_hf, _gpt(), attn_implementation="eager")


@entry("course_utils.gpt.generate", accept={"prompt:size": "a longer prompt",
                                            "max_new_tokens:zero": "zero new tokens: the prompt"})
def _():
    return Call(G.generate, _gpt(), torch.tensor([[1, 2], [3, 4]]), 3, temperature=0.8, top_k=5,
                top_p=0.9, generator=torch.Generator().manual_seed(0), use_cache=True)


@entry("course_utils.gpt.LlamaStyleConfig")
def _():
    return Call(G.LlamaStyleConfig, vocab_size=11, n_layer=1, n_head=2, n_kv_head=1, n_embd=8,
                head_dim=4, intermediate_size=12, rms_norm_eps=1e-6, rope_base=10000.0,
                tie_weights=True)


@entry("course_utils.gpt.SwiGLU")
def _():
    return Call(G.SwiGLU, 8, 20)


@entry("course_utils.gpt.SwiGLU.forward")
def _():
    return Call(G.SwiGLU(8, 20).forward, randn(2, 3, 8))


@entry("course_utils.gpt.LlamaBlock")
def _():
    return Call(G.LlamaBlock, _llama_cfg())


@entry("course_utils.gpt.LlamaGPT")
def _():
    return Call(G.LlamaGPT, _llama_cfg())


@entry("course_utils.gpt.LlamaGPT.forward")
def _():
    return Call(_llama().forward, torch.tensor([[1, 2, 3], [4, 5, 6]]),
                key_padding_mask=torch.tensor([[True, False, False], [False, False, False]]))


@entry("course_utils.gpt.llama_from_hf")
def _():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, head_dim=4))
    return Call(G.llama_from_hf, hf)


@entry("course_utils.gpt.cosine_lr", accept={"step:zero": "the first step",
                                             "warmup:zero": "no warm-up"})
def _():
    return Call(G.cosine_lr, 50, 1e-3, 10, 100, min_lr=1e-4)


@entry("course_utils.gpt.LMTrainer", accept={"warmup:zero": "no warm-up"})
def _():
    return Call(G.LMTrainer, _gpt(), lr=1e-2, total_steps=30, warmup=2, min_lr=1e-3,
                weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0)


@entry("course_utils.gpt.LMTrainer.step")
def _():
    trainer = G.LMTrainer(_gpt(), lr=1e-2, total_steps=30, warmup=0)
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    return Call(trainer.step, x, x.roll(1, 1))


@entry("course_utils.gpt.evaluate_loss", accept={"data:size": "a longer text"})
def _():
    return Call(G.evaluate_loss, _gpt(), torch.arange(40) % 11, 8, batch_size=2)


@entry("course_utils.gpt.loss_by_position", accept={"data:size": "a longer text"})
def _():
    return Call(G.loss_by_position, _gpt(), torch.arange(40) % 11, 8, batch_size=2)


@entry("course_utils.gpt.repeated_random_tokens")
def _():
    return Call(G.repeated_random_tokens, 2, 4, 11, generator=torch.Generator().manual_seed(0))


@entry("course_utils.gpt.AttentionOnlyTransformer")
def _():
    return Call(G.AttentionOnlyTransformer, 11, 16, d_model=8, n_head=2, n_layer=1)


@entry("course_utils.gpt.AttentionOnlyTransformer.forward", accept={"tokens:size": "a longer sequence (still within the model's positions)"})
def _():
    torch.manual_seed(0)
    model = G.AttentionOnlyTransformer(11, 16, d_model=8, n_head=2, n_layer=1)
    return Call(model.forward, torch.tensor([[1, 2, 3], [4, 5, 6]]))


@entry("course_utils.gpt.induction_scores", accept={
    "weights:nan,weights:inf": "the NaN sits at a weight the score does not read"})
def _():
    return Call(G.induction_scores, softmax(2, 2, 8, 8), 4)


record("course_utils.datasets.pydoc_text.available", "takes no argument")
record("course_utils.datasets.pydoc_text.load_topics", "takes no argument")


@entry("course_utils.datasets.pydoc_text.corpus_text")
def _():
    return Call(PT.corpus_text, "valid", valid_fraction=0.1)


@entry("course_utils.datasets.pydoc_text.fingerprint", accept={"text:*": "any text has one"})
def _():
    return Call(PT.fingerprint, "hello")


@entry("course_utils.datasets.pydoc_text.split_topics")
def _():
    return Call(PT.split_topics, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
                valid_fraction=0.2)


@entry("course_utils.datasets.pydoc_text.CharTokenizer", accept={"text:unknown": "any text"})
def _():
    return Call(PT.CharTokenizer, "hello world")


@entry("course_utils.datasets.pydoc_text.CharTokenizer.encode",
       accept={"text:empty": "no text, no ids"})
def _():
    return Call(PT.CharTokenizer("hello world").encode, "low")


@entry("course_utils.datasets.pydoc_text.CharTokenizer.decode",
       accept={"ids:empty": "no ids, no text"})
def _():
    return Call(PT.CharTokenizer("hello world").decode, [1, 2, 3])


@entry("course_utils.datasets.pydoc_text.train_bpe_tokenizer")
def _():
    texts = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n"] * 3
    return Call(PT.train_bpe_tokenizer, texts, vocab_size=300)


@entry("course_utils.datasets.pydoc_text.random_windows", accept={"data:negative,data:huge,data:size": "windows of any integers (the model checks the "
                                                   "vocabulary), of a longer text"})
def _():
    return Call(PT.random_windows, torch.arange(40) % 11, 8, 3,
                generator=torch.Generator().manual_seed(0))


@entry("course_utils.datasets.pydoc_text.sequential_windows", accept={"data:negative,data:huge,data:size": "windows of any integers (the model checks the "
                                                   "vocabulary), of a longer text"})
def _():
    return Call(PT.sequential_windows, torch.arange(40) % 11, 8, 3)


# =============================================================================================
# course_utils.inference.*
# =============================================================================================
from course_utils.inference import compiled as IC  # noqa: E402
from course_utils.inference import flex as FX  # noqa: E402
from course_utils.inference import latent_attention as LA  # noqa: E402
from course_utils.inference import linear_attention as LIN  # noqa: E402
from course_utils.inference import paged_cache as PC  # noqa: E402
from course_utils.inference import recall as RC  # noqa: E402
from course_utils.inference import sliding_window as SW  # noqa: E402


@entry("course_utils.inference.compiled.tile_update")
def _():
    bh, bq, bk, d = 2, 3, 4, 5
    return Call(IC.tile_update, randn(bh, bq, d), randn(bh, d, bk, seed=1), randn(bh, bk, d, seed=2),
                torch.full((bh, bq, 1), -math.inf), torch.zeros(bh, bq, 1), torch.zeros(bh, bq, d))


@entry("course_utils.inference.compiled.compiled_tiled_attention", slow=True, **QKV_RULES)
def _():
    return Call(IC.compiled_tiled_attention, randn(2, 3, 4), randn(2, 5, 4, seed=1),
                randn(2, 5, 6, seed=2), causal=True, scale=0.5, block_q=2, block_k=2,
                compiled=False)


@entry("course_utils.inference.compiled.compile_seconds",
       skip={"args[*]": "fn's own inputs, passed to it as they are: fn checks them"})
def _():
    return Call(IC.compile_seconds, torch.add, randn(2), randn(2, seed=1))


record("course_utils.inference.compiled.inductor_cache_hits", "takes no argument")
record("course_utils.inference.flex.causal_mod",
       "a mask_mod called by flex_attention with index tensors it makes itself")


@entry("course_utils.inference.flex.sliding_window_mod")
def _():
    return Call(FX.sliding_window_mod, 3)


@entry("course_utils.inference.flex.document_mod", accept={"doc_ids:negative,doc_ids:huge,doc_ids:size": "any integer document ids, a longer sequence"})
def _():
    return Call(FX.document_mod, torch.tensor([[0, 0, 1, 1]]), causal=True)


@entry("course_utils.inference.flex.prefix_lm_mod",
       accept={"prefix_len:zero": "no prefix: the causal mask"})
def _():
    return Call(FX.prefix_lm_mod, 2)


@entry("course_utils.inference.flex.alibi_score_mod",
       accept={"slopes:size": "one slope per head, for more heads"})
def _():
    return Call(FX.alibi_score_mod, P.alibi_slopes(2))


@entry("course_utils.inference.flex.document_mask", accept={"doc_ids:negative,doc_ids:huge,doc_ids:size": "any integer document ids, a longer sequence"})
def _():
    return Call(FX.document_mask, torch.tensor([[0, 0, 1, 1]]), causal=True)


@entry("course_utils.inference.flex.prefix_lm_mask",
       accept={"prefix_len:zero": "no prefix: the causal mask"})
def _():
    return Call(FX.prefix_lm_mask, 4, 2, device="cpu")


@entry("course_utils.inference.flex.block_mask")
def _():
    return Call(FX.block_mask, FX.causal_mod, 8, 8, batch=None, heads=None, block_size=4,
                device="cpu")


@entry("course_utils.inference.flex.block_stats")
def _():
    return Call(FX.block_stats, FX.block_mask(FX.causal_mod, 8, 8, block_size=4))


@entry("course_utils.inference.flex.tile_map")
def _():
    return Call(FX.tile_map, FX.block_mask(FX.causal_mod, 8, 8, block_size=4), batch=0, head=0)


@entry("course_utils.inference.flex.flex", slow=True, **QKV_RULES)
def _():
    return Call(FX.flex, randn(1, 2, 8, 4), randn(1, 2, 8, 4, seed=1), randn(1, 2, 8, 4, seed=2),
                score_mod=FX.alibi_score_mod(P.alibi_slopes(2)),
                block_mask=FX.block_mask(FX.causal_mod, 8, 8, block_size=4), scale=0.5,
                compiled=False)


@entry("course_utils.inference.latent_attention.MLAConfig")
def _():
    return Call(LA.MLAConfig, d_model=16, num_heads=2, head_dim=8, kv_rank=4, rope_dim=2,
                q_rank=6, num_layers=2)


@entry("course_utils.inference.latent_attention.kv_cache_bytes_per_token")
def _():
    return Call(LA.kv_cache_bytes_per_token, "gqa", LA.DEEPSEEK_V2, kv_heads=8, bytes_per_number=2)


@entry("course_utils.inference.latent_attention.LatentKVCache")
def _():
    return Call(LA.LatentKVCache, 2, 2, 4, 2, 8, dtype=torch.float32, device="cpu")


@entry("course_utils.inference.latent_attention.LatentKVCache.update")
def _():
    cache = LA.LatentKVCache(2, 2, 4, 2, 8)
    return Call(cache.update, 0, randn(2, 1, 3, 4), randn(2, 1, 3, 2, seed=1))


def _mla():
    torch.manual_seed(0)
    return LA.MultiHeadLatentAttention(16, 2, kv_rank=4, q_rank=6, nope_dim=4, rope_dim=2,
                                       v_dim=4).eval()


@entry("course_utils.inference.latent_attention.MultiHeadLatentAttention")
def _():
    return Call(LA.MultiHeadLatentAttention, 16, 2, kv_rank=4, q_rank=6, nope_dim=4, rope_dim=2,
                v_dim=4, eps=1e-6)


@entry("course_utils.inference.latent_attention.MultiHeadLatentAttention.forward")
def _():
    mla = _mla()
    return Call(mla.forward, randn(2, 3, 16), mla.new_cache(2, 8), layer=0, absorbed=True)


@entry("course_utils.inference.linear_attention.feature_map",
       accept={"x:rank*,x:size": SHAPE_FREE})
def _():
    return Call(LIN.feature_map, randn(2, 3, 4))


@entry("course_utils.inference.linear_attention.linear_attention", **QKV_RULES)
def _():
    return Call(LIN.linear_attention, randn(2, 5, 4), randn(2, 5, 4, seed=1), randn(2, 5, 3, seed=2),
                causal=True, eps=1e-6)


@entry("course_utils.inference.linear_attention.linear_attention_recurrent", **QKV_RULES)
def _():
    return Call(LIN.linear_attention_recurrent, randn(2, 5, 4), randn(2, 5, 4, seed=1),
                randn(2, 5, 3, seed=2), eps=1e-6)


@entry("course_utils.inference.linear_attention.linear_attention_chunked", **QKV_RULES)
def _():
    return Call(LIN.linear_attention_chunked, randn(2, 5, 4), randn(2, 5, 4, seed=1),
                randn(2, 5, 3, seed=2), chunk=2, eps=1e-6)


@entry("course_utils.inference.linear_attention.LinearAttentionState",
       accept={"s:size": "a state for values of another width Dv: S is (..., D, Dv)"})
def _():
    return Call(LIN.LinearAttentionState, torch.zeros(2, 4, 3), torch.zeros(2, 4), eps=1e-6)


@entry("course_utils.inference.linear_attention.LinearAttentionState.step")
def _():
    state = LIN.LinearAttentionState.zeros((2,), 4, 3)
    return Call(state.step, randn(2, 4), randn(2, 4, seed=1), randn(2, 3, seed=2))


@entry("course_utils.inference.linear_attention.LinearAttention")
def _():
    return Call(LIN.LinearAttention, 8, 2, chunk=4)


@entry("course_utils.inference.linear_attention.LinearAttention.forward")
def _():
    torch.manual_seed(0)
    return Call(LIN.LinearAttention(8, 2, chunk=4).forward, randn(2, 5, 8))


@entry("course_utils.inference.paged_cache.PagedKVCache")
def _():
    return Call(PC.PagedKVCache, 2, 2, 4, 8, block_size=4, dtype=torch.float32, device="cpu")


@entry("course_utils.inference.paged_cache.PagedKVCache.update")
def _():
    cache = PC.PagedKVCache(2, 2, 4, 8, block_size=4)
    cache.add("a")
    cache.add("b")
    cache.set_batch(["a", "b"])
    return Call(cache.update, 0, randn(2, 2, 3, 4), randn(2, 2, 3, 4, seed=1))


@entry("course_utils.inference.paged_cache.PagedKVCache.crop",
       accept={"length:zero": "crop to nothing"},
       documented=(KeyError,))  # an unknown seq_id, as a dict's KeyError (class docstring)
def _():
    cache = PC.PagedKVCache(1, 2, 4, 8, block_size=4)
    cache.add("a")
    cache.set_batch(["a"])
    cache.update(0, randn(1, 2, 5, 4), randn(1, 2, 5, 4, seed=1))
    return Call(cache.crop, "a", 3)


@entry("course_utils.inference.paged_cache.contiguous_waste_fraction")
def _():
    return Call(PC.contiguous_waste_fraction, [100, 300], 1000)


@entry("course_utils.inference.recall.RecallConfig")
def _():
    return Call(RC.RecallConfig, num_keys=16, num_values=8, num_pairs=4, num_queries=2, d_model=8,
                num_heads=2, num_layers=1, batch_size=4, steps=2)


def _recall_cfg():
    return RC.RecallConfig(num_keys=16, num_values=8, num_pairs=4, num_queries=2, d_model=8,
                           num_heads=2, num_layers=1, batch_size=4, steps=2)


@entry("course_utils.inference.recall.recall_batch",
       accept={"generator:None": "torch's global generator"})
def _():
    return Call(RC.recall_batch, _recall_cfg(), 3, torch.Generator().manual_seed(0))


@entry("course_utils.inference.recall.RecallModel")
def _():
    return Call(RC.RecallModel, _recall_cfg(), "linear")


@entry("course_utils.inference.recall.RecallModel.forward")
def _():
    torch.manual_seed(0)
    keys, values, _ = RC.recall_batch(_recall_cfg(), 3, torch.Generator().manual_seed(0))
    return Call(RC.RecallModel(_recall_cfg(), "softmax").forward, keys, values)


@entry("course_utils.inference.recall.train_recall", accept={"seed:zero": ANY_SEED})
def _():
    return Call(RC.train_recall, _recall_cfg(), "softmax", 1e-2, 1, eval_sets=(), progress=False)


@entry("course_utils.inference.recall.tune_recall", slow=True, accept={"seed:zero": ANY_SEED})
def _():
    return Call(RC.tune_recall, _recall_cfg(), lrs=(1e-2,), seed=1, progress=False)


@entry("course_utils.inference.sliding_window.window_mask",
       accept={"lq:zero": "0 queries: an empty mask"})
def _():
    return Call(SW.window_mask, 2, 5, 3, device="cpu")


@entry("course_utils.inference.sliding_window.RollingKVCache")
def _():
    return Call(SW.RollingKVCache, 2, 2, 2, 4, 3, dtype=torch.float32, device="cpu")


@entry("course_utils.inference.sliding_window.RollingKVCache.update")
def _():
    cache = SW.RollingKVCache(2, 2, 2, 4, 3)
    return Call(cache.update, 0, randn(2, 2, 2, 4), randn(2, 2, 2, 4, seed=1))


# =============================================================================================
# course_utils.seq2seq, datasets.translation, datasets.vocab
# =============================================================================================
import random  # noqa: E402
import zipfile  # noqa: E402

from course_utils import seq2seq as S2S  # noqa: E402
from course_utils.datasets import translation as TR  # noqa: E402
from course_utils.datasets import vocab as VOC  # noqa: E402


def _vocab():
    return VOC.Vocab(["a", "b", "c", "le", "chat"])


def _s2s(kind: str = "transformer"):
    torch.manual_seed(0)
    if kind == "transformer":
        return S2S.TransformerSeq2Seq(9, 9, d_model=8, nhead=2, num_layers=1, dim_feedforward=16,
                                      dropout=0.0, max_len=32).eval()
    return S2S.GRUSeq2Seq(9, 9, emb_dim=8, enc_hidden=8, dec_hidden=8, attention=True,
                          dropout=0.0).eval()


SRC = torch.tensor([[4, 5, 2, 0], [6, 7, 8, 2]])
SRC_PAD = SRC == 0


@entry("course_utils.datasets.vocab.Vocab", accept={"tokens:empty": "a vocabulary of the special tokens only"})
def _():
    return Call(VOC.Vocab, ["a", "b", "c"], unk=True)


@entry("course_utils.datasets.vocab.Vocab.encode", accept={"tokens:empty": "an empty sentence"})
def _():
    return Call(_vocab().encode, ["le", "chat", "x"], add_bos=True, add_eos=True)


@entry("course_utils.datasets.vocab.Vocab.decode", accept={"ids:empty": "no ids, no words"})
def _():
    return Call(_vocab().decode, [1, 8, 4, 2], strip=True)


@entry("course_utils.datasets.translation.Vocab", accept={"tokens:empty": "a vocabulary of the special tokens only"})
def _():
    return Call(TR.Vocab, ["a", "b", "c"], unk=True)


@entry("course_utils.datasets.scenes.Vocab", accept={"tokens:empty": "a vocabulary of the special tokens only"})
def _():
    from course_utils.datasets import scenes

    return Call(scenes.Vocab, ["a", "b", "c"], unk=True)


@entry("course_utils.datasets.translation.generate_pair")
def _():
    return Call(TR.generate_pair, random.Random(5), n_clauses=1, complexity=0.5)


@entry("course_utils.datasets.translation.tokenize", accept={"text:*": "any text"})
def _():
    return Call(TR.tokenize, "L'homme n'a pas vu le chat.", lower=True)


@entry("course_utils.datasets.translation.detokenize", accept={"tokens:empty": "no words"})
def _():
    return Call(TR.detokenize, ["l'", "homme", "voit", "le", "chat", "."], lang="fr")


@entry("course_utils.datasets.translation.encode_batch")
def _():
    return Call(TR.encode_batch, [["le", "chat"], ["a"]], _vocab(), add_bos=True, add_eos=True)


@entry("course_utils.datasets.translation.train_bpe")
def _():
    return Call(TR.train_bpe, ["le chat noir", "le chien blanc", "un chat"] * 3, vocab_size=60,
                min_frequency=2)


@entry("course_utils.datasets.translation.make_corpus", accept={"seed:zero": ANY_SEED})
def _():
    return Call(TR.make_corpus, 6, seed=1, max_words=20)


@entry("course_utils.datasets.translation.length_bucket")
def _():
    return Call(TR.length_bucket, 12, edges=(10, 20, 30))


@entry("course_utils.datasets.translation.bucket_order")
def _():
    return Call(TR.bucket_order, "10-19")


@entry("course_utils.datasets.translation.split_corpus", accept={
    "seed:zero": ANY_SEED, "n_valid:zero,n_test:zero": "a split may be left empty on purpose"})
def _():
    return Call(TR.split_corpus, TR.make_corpus(30, seed=1), 5, 5, seed=1, edges=(10, 20, 30))


@entry("course_utils.datasets.translation.Corpus", accept={
    "valid:empty,test:empty": "a split may be left empty on purpose (split_corpus(n_valid=0))"})
def _():
    return Call(TR.Corpus, [("Hi.", "Salut.")], [("Go.", "Va !")], [("Run.", "Cours !")])


@entry("course_utils.datasets.translation.Corpus.references")
def _():
    return Call(TR.split_corpus(TR.make_corpus(30, seed=1), 5, 5).references, "test")


@entry("course_utils.datasets.translation.sha256_file", documented=(FileNotFoundError,))
def _():
    return Call(TR.sha256_file, _source_file())


@entry("course_utils.datasets.translation.download", documented=(download.DownloadError,),
       names={"url": "could not download"})
def _():
    src = _source_file()
    return Call(TR.download, src.as_uri(), src.parent / "copy.txt", download.sha256_file(src))


def _tatoeba_zip() -> Path:
    path = tmpdir() / "fra-eng.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fra.txt", "Go.\tVa !\tCC-BY 2.0\nHi.\tSalut !\tCC-BY 2.0\n")
    return path


@entry("course_utils.datasets.translation.download_tatoeba",
       documented=(download.DownloadError, FileNotFoundError), names={"url": "could not download"})
def _():
    import hashlib

    src = _tatoeba_zip()
    return Call(TR.download_tatoeba, src.parent / "copy.zip", src.as_uri(),
                hashlib.sha1(src.read_bytes()).hexdigest())


@entry("course_utils.datasets.translation.load_tatoeba", documented=(FileNotFoundError,))
def _():
    src = _tatoeba_zip()
    return Call(TR.load_tatoeba, src, sha256=download.sha256_file(src), cache_dir=src.parent / "c",
                max_pairs=5)


record("course_utils.datasets.translation.available", "takes no argument")


record("course_utils.seq2seq.Batch", "a result record that make_batch and BatchIterator build")


@entry("course_utils.seq2seq.BatchIterator", accept={"seed:zero": ANY_SEED})
def _():
    v = _vocab()
    return Call(S2S.BatchIterator, [[4]] * 6, [[4, 5]] * 6, v, v, batch_size=2, seed=1, pool=2)


@entry("course_utils.seq2seq.GRUSeq2Seq")
def _():
    return Call(S2S.GRUSeq2Seq, 9, 9, emb_dim=8, enc_hidden=8, dec_hidden=8, attention=True,
                attn_dim=8, dropout=0.1, pad_id=0)


@entry("course_utils.seq2seq.GRUSeq2Seq.forward", accept={"tgt_in:size": "a longer target"})
def _():
    return Call(_s2s("gru").forward, SRC, SRC_PAD, torch.tensor([[1, 4, 5], [1, 6, 0]]),
                return_attention=True)


@entry("course_utils.seq2seq.TransformerSeq2Seq")
def _():
    return Call(S2S.TransformerSeq2Seq, 9, 9, d_model=8, nhead=2, num_layers=1, dim_feedforward=16,
                dropout=0.1, max_len=32, pad_id=0)


@entry("course_utils.seq2seq.TransformerSeq2Seq.forward",
       accept={"tgt_in:size": "a longer target"})
def _():
    return Call(_s2s().forward, SRC, SRC_PAD, torch.tensor([[1, 4, 5], [1, 6, 0]]))


@entry("course_utils.seq2seq.greedy_decode", accept={"bos:zero,eos:zero": "any token id"})
def _():
    return Call(S2S.greedy_decode, _s2s(), SRC, SRC_PAD, 5, bos=1, eos=2, pad=0, use_cache=True)


@entry("course_utils.seq2seq.beam_search", accept={"bos:zero,eos:zero": "any token id"})
def _():
    return Call(S2S.beam_search, _s2s("gru"), SRC, SRC_PAD, 2, 5, length_penalty=0.6, bos=1,
                eos=2, pad=0, use_cache=True)


def _translation_model():
    v = _vocab()
    torch.manual_seed(0)
    return S2S.TransformerSeq2Seq(len(v), len(v), d_model=8, nhead=2, num_layers=1,
                                  dim_feedforward=16, dropout=0.0, max_len=32).eval(), v


@entry("course_utils.seq2seq.translate", accept={"sentences:empty": "no sentences, no "
                                                                    "translations"})
def _():
    model, v = _translation_model()
    return Call(S2S.translate, model, ["le chat", "a b c"], v, v, beam_width=2, batch_size=1,
                device="cpu", max_len_factor=1.5, use_cache=True)


def _batches():
    v = _vocab()
    return S2S.BatchIterator([[4, 5], [6]] * 4, [[5], [4, 6]] * 4, v, v, batch_size=2)


@entry("course_utils.seq2seq.train_seq2seq", accept={"desc:*": FREE_TEXT,
                                                   "warmup:zero": "no warm-up"})
def _():
    model, _ = _translation_model()
    return Call(S2S.train_seq2seq, model.train(), _batches(), 2, lr=1e-3, warmup=1, clip=1.0,
                label_smoothing=0.1, device="cpu", desc="training", pad_id=0, progress=False)


def _job(**kw):
    return S2S.TranslationJob("t", "transformer", steps=2, lr=1e-3, warmup=1, batch_size=2,
                              sizes=dict(d_model=8, layers=1, ff=16, heads=2), **kw)


@entry("course_utils.seq2seq.TranslationJob", accept={
    "name:*": FREE_TEXT, "seed:zero": ANY_SEED, "warmup:zero": "no warm-up",
    "sizes:empty": "every size at the model's default"})
def _():
    return Call(S2S.TranslationJob, "t", "transformer", steps=2, lr=1e-3, warmup=1,
                label_smoothing=0.1, seed=1, batch_size=2,
                sizes=dict(d_model=8, layers=1, ff=16, heads=2))


@entry("course_utils.seq2seq.build_model")
def _():
    return Call(S2S.build_model, _job(), 9, 9)


def _translation_data():
    v = _vocab()
    return S2S.TranslationData([[4, 5], [6]] * 4, [[5], [4, 6]] * 4, v, v)


@entry("course_utils.seq2seq.TranslationData")
def _():
    v = _vocab()
    return Call(S2S.TranslationData, [[4, 5], [6]] * 4, [[5], [4, 6]] * 4, v, v)


@entry("course_utils.seq2seq.train_jobs", slow=True)
def _():
    return Call(S2S.train_jobs, [_job()], _translation_data(), workers=1, device="cpu")


record("course_utils.seq2seq.TrainedModel", "a result record that train_jobs builds")


@entry("course_utils.seq2seq.corpus_bleu")
def _():
    return Call(S2S.corpus_bleu, ["le chat est noir .", "il pleut"],
                ["le chat est noir .", ["il pleut", "il pleut ."]], lowercase=False)


@entry("course_utils.seq2seq.bleu_by_length")
def _():
    return Call(S2S.bleu_by_length, ["the cat is black", "it rains"],
                ["le chat est noir .", "il pleut"], ["le chat est noir .", "il pleut"],
                edges=(3, 10))


# =============================================================================================
# Vision and language: captioning, vqa, datasets.scenes / easy_vqa / questions
# =============================================================================================
from course_utils import captioning as CAP  # noqa: E402
from course_utils import vqa as VQA  # noqa: E402
from course_utils.datasets import easy_vqa as EV  # noqa: E402
from course_utils.datasets import questions as Q  # noqa: E402
from course_utils.datasets import scenes as SC  # noqa: E402

_CACHE: dict = {}


def _scenes():
    if "scenes" not in _CACHE:
        _CACHE["scenes"] = SC.make_dataset(6, seed=1)
    return _CACHE["scenes"]


def _questions():
    if "questions" not in _CACHE:
        _CACHE["questions"] = Q.make_questions(8, seed=1)
    return _CACHE["questions"]


def _captioner(decoder: str = "attention"):
    job = CAP.CaptionJob("c", decoder, steps=2, lr=3e-3, dim=8,
                         decoder_kwargs={"hidden_dim": 8, "embed_dim": 8}
                         if decoder != "transformer" else {"d_model": 8, "nhead": 2,
                                                           "num_layers": 1, "dim_feedforward": 16})
    return CAP.build_captioner(job, vocab_size=len(_scenes().vocab)).eval()


record("course_utils.datasets.scenes.SceneObject", "a record of one object that render_scene builds")


@entry("course_utils.datasets.scenes.caption_from_objects")
def _():
    return Call(SC.caption_from_objects, _scenes().objects[0])


@entry("course_utils.datasets.scenes.parse_caption", accept={"caption:*": "any words: the objects it names are found"})
def _():
    return Call(SC.parse_caption, _scenes().captions[0])


@entry("course_utils.datasets.scenes.parse_relations", accept={"caption:*": "any words: the objects it names are found"})
def _():
    return Call(SC.parse_relations, "a small red circle left of a large blue square")


@entry("course_utils.datasets.scenes.generate_scene")
def _():
    return Call(SC.generate_scene, np.random.default_rng(0), image_size=32, grid=4,
                n_objects=(2, 3), noise=0.03, allowed=[("red", "circle"), ("blue", "square")],
                require=[("red", "circle")])


@entry("course_utils.datasets.scenes.render_scene")
def _():
    return Call(SC.render_scene, np.random.default_rng(0), [(0, "red", "circle"), (5, "blue", "cross")],
                image_size=32, grid=4, noise=0.03)


@entry("course_utils.datasets.scenes.check_rng")
def _():
    return Call(SC.check_rng, np.random.default_rng(0))


record("course_utils.datasets.scenes.caption_vocab", "takes no argument")
record("course_utils.datasets.scenes.available", "takes no argument")


@entry("course_utils.datasets.scenes.cell_masks")
def _():
    return Call(SC.cell_masks, _scenes().masks[:2], grid=4)


@entry("course_utils.datasets.scenes.make_dataset", accept={"seed:zero": ANY_SEED})
def _():
    return Call(SC.make_dataset, 3, seed=1, image_size=32, grid=4, n_objects=(2, 3), noise=0.03,
                heldout=False, vocab=SC.caption_vocab())


@entry("course_utils.datasets.scenes.make_splits", accept={"seed:zero": ANY_SEED})
def _():
    return Call(SC.make_splits, seed=1, n_train=3, n_valid=2, n_test=2, n_heldout=2)


record("course_utils.datasets.scenes.SceneDataset", "a record that make_dataset builds")


@entry("course_utils.datasets.scenes.SceneDataset.subset")
def _():
    return Call(_scenes().subset, [0, 2])


record("course_utils.datasets.questions.available", "takes no argument")
record("course_utils.datasets.questions.question_vocab", "takes no argument")
record("course_utils.datasets.questions.IllPosedQuestion", "an exception class the course raises")


@entry("course_utils.datasets.questions.Question")
def _():
    return Call(Q.Question, "colour", "left of", ("blue", "circle"), None)


@entry("course_utils.datasets.questions.relation_holds")
def _():
    a = SC.SceneObject("circle", "red", "small", 2, 0, 20, 4, (18, 2, 23, 7))
    b = SC.SceneObject("cross", "blue", "small", 0, 3, 4, 28, (2, 26, 7, 31))
    return Call(Q.relation_holds, a, "left of", b)


@entry("course_utils.datasets.questions.answer", documented=(Q.IllPosedQuestion,))
def _():
    d = _questions()
    return Call(Q.answer, d.specs[0], d.objects[0])


@entry("course_utils.datasets.questions.focus")
def _():
    d = _questions()
    return Call(Q.focus, d.specs[0], d.objects[0])


@entry("course_utils.datasets.questions.make_question")
def _():
    return Call(Q.make_question, np.random.default_rng(0), "shape", "cross", grid=4,
                n_objects=(3, 4))


@entry("course_utils.datasets.questions.make_questions", accept={"seed:zero": ANY_SEED})
def _():
    return Call(Q.make_questions, 4, 1, compositional=False, grid=4, image_size=32,
                n_objects=(3, 4), noise=0.03)


@entry("course_utils.datasets.questions.make_question_splits", accept={"seed:zero": ANY_SEED})
def _():
    return Call(Q.make_question_splits, seed=1, n_train=4, n_valid=4, n_test=4, n_compositional=4)


record("course_utils.datasets.questions.VQADataset", "a record that make_questions and load_easy_vqa build")


@entry("course_utils.datasets.questions.VQADataset.batch",
       accept={"index:size": "a larger batch"})
def _():
    return Call(_questions().batch, torch.tensor([0, 2]))


@entry("course_utils.datasets.questions.VQADataset.subset")
def _():
    return Call(_questions().subset, [0, 2])


record("course_utils.datasets.easy_vqa.available", "takes no argument")
record("course_utils.datasets.easy_vqa.data_dir", "takes no argument")


@entry("course_utils.datasets.easy_vqa.question_kind")
def _():
    return Call(EV.question_kind, "what color is the shape?")


@entry("course_utils.datasets.easy_vqa.load_easy_vqa", slow=True,
       documented=(FileNotFoundError,))
def _():
    return Call(EV.load_easy_vqa, "test", root=None, vocab=None)


@entry("course_utils.datasets.easy_vqa.load_easy_vqa_splits", slow=True,
       documented=(FileNotFoundError,))
def _():
    return Call(EV.load_easy_vqa_splits, root=None, vocab=None, splits=("test",))


@entry("course_utils.datasets.easy_vqa.answer_shares")
def _():
    return Call(EV.answer_shares, _questions())


@entry("course_utils.captioning.GridEncoder")
def _():
    return Call(CAP.GridEncoder, dim=8, grid=4, image_size=32, channels=8, pos_std=0.02, stem=2,
                context=1)


@entry("course_utils.captioning.GridEncoder.forward")
def _():
    torch.manual_seed(0)
    return Call(CAP.GridEncoder(dim=8, channels=8).forward, randn(2, 3, 32, 32))


@entry("course_utils.captioning.sincos_grid")
def _():
    return Call(CAP.sincos_grid, 4, 8)


@entry("course_utils.captioning.AttentionLSTMDecoder")
def _():
    return Call(CAP.AttentionLSTMDecoder, 12, feat_dim=8, embed_dim=8, hidden_dim=8, attn_dim=8,
                dropout=0.1, gate=True)


@entry("course_utils.captioning.AttentionLSTMDecoder.forward", accept={"tokens:size": "a longer caption"})
def _():
    torch.manual_seed(0)
    dec = CAP.AttentionLSTMDecoder(12, feat_dim=8, embed_dim=8, hidden_dim=8, attn_dim=8)
    return Call(dec.forward, randn(2, 16, 8), torch.tensor([[1, 4, 5], [1, 6, 0]]))


@entry("course_utils.captioning.PooledLSTMDecoder")
def _():
    return Call(CAP.PooledLSTMDecoder, 12, feat_dim=8, grid_cells=16, pool="mean", embed_dim=8,
                hidden_dim=8, dropout=0.1, img_dim=8)


@entry("course_utils.captioning.PooledLSTMDecoder.forward", accept={"tokens:size": "a longer caption"})
def _():
    torch.manual_seed(0)
    dec = CAP.PooledLSTMDecoder(12, feat_dim=8, grid_cells=16, pool="flat", embed_dim=8,
                                hidden_dim=8)
    return Call(dec.forward, randn(2, 16, 8), torch.tensor([[1, 4, 5], [1, 6, 0]]))


@entry("course_utils.captioning.TransformerCaptionDecoder")
def _():
    return Call(CAP.TransformerCaptionDecoder, 12, feat_dim=8, d_model=8, nhead=2, num_layers=1,
                dim_feedforward=16, dropout=0.1, max_len=10, grid_cells=16, memory_pos_std=0.5)


@entry("course_utils.captioning.TransformerCaptionDecoder.forward", accept={"tokens:size": "a longer caption"})
def _():
    torch.manual_seed(0)
    dec = CAP.TransformerCaptionDecoder(12, feat_dim=8, d_model=8, nhead=2, num_layers=1,
                                        dim_feedforward=16, max_len=10)
    return Call(dec.forward, randn(2, 16, 8), torch.tensor([[1, 4, 5], [1, 6, 0]]))


@entry("course_utils.captioning.Captioner")
def _():
    m = _captioner()
    return Call(CAP.Captioner, m.encoder, m.decoder)


@entry("course_utils.captioning.Captioner.forward", accept={"tokens:size": "a longer caption"})
def _():
    return Call(_captioner().forward, randn(2, 3, 32, 32), torch.tensor([[1, 4, 5], [1, 6, 0]]))


@entry("course_utils.captioning.doubly_stochastic_penalty",
       accept={"alphas:size": "any number of cells"})
def _():
    return Call(CAP.doubly_stochastic_penalty, softmax(2, 3, 16),
                torch.tensor([[True, True, False], [True, True, True]]))


@entry("course_utils.captioning.caption_loss", accept={"tokens:size": "a longer caption"})
def _():
    return Call(CAP.caption_loss, _captioner(), _scenes().images[:2], _scenes().tokens[:2], pad=0,
                ds_weight=0.5)


@entry("course_utils.captioning.train_captioner", slow=True, accept={"desc:*": FREE_TEXT,
                                                                     "seed:zero": ANY_SEED})
def _():
    return Call(CAP.train_captioner, _captioner().train(), _scenes(), 2, batch_size=2, lr=3e-3,
                ds_weight=0.5, seed=1, desc="training", clip=5.0, warmup=1, progress=False,
                log_every=1)


@entry("course_utils.captioning.SyncEvery")
def _():
    return Call(CAP.SyncEvery, 2)


@entry("course_utils.captioning.CaptionJob", accept={"name:*": FREE_TEXT,
                                                    "decoder_kwargs:empty": "the defaults"})
def _():
    return Call(CAP.CaptionJob, "c", "attention", steps=2, lr=3e-3, ds_weight=0.5, warmup=1, dim=8,
                seed=1, decoder_kwargs={"hidden_dim": 8})


@entry("course_utils.captioning.build_captioner")
def _():
    job = CAP.CaptionJob("c", "flat", steps=2, lr=3e-3, dim=8, decoder_kwargs={"hidden_dim": 8})
    return Call(CAP.build_captioner, job, 19, grid=4, image_size=32)


@entry("course_utils.captioning.train_jobs", slow=True)
def _():
    job = CAP.CaptionJob("c", "flat", steps=2, lr=3e-3, dim=8, decoder_kwargs={"hidden_dim": 8})
    return Call(CAP.train_jobs, [job], _scenes(), workers=1)


record("course_utils.captioning.TrainedJob", "a result record that train_jobs builds")
record("course_utils.captioning.Decoded", "a result record that the decoders build")


@entry("course_utils.captioning.greedy_decode")
def _():
    return Call(CAP.greedy_decode, _captioner(), _scenes().images[:2], _scenes().vocab, max_len=6)


@entry("course_utils.captioning.beam_search")
def _():
    return Call(CAP.beam_search, _captioner(), _scenes().images[:2], _scenes().vocab, beam_size=2,
                max_len=6, length_penalty=0.5)


@entry("course_utils.captioning.bleu4")
def _():
    return Call(CAP.bleu4, ["a small red circle", "a blue cross"],
                ["a small red circle", "a large blue cross"])


@entry("course_utils.captioning.exact_match")
def _():
    return Call(CAP.exact_match, ["a small red circle", "a blue cross"],
                ["a small red circle", "a large blue cross"])


@entry("course_utils.captioning.slot_accuracy")
def _():
    return Call(CAP.slot_accuracy, ["a small red circle", "a large blue cross"],
                ["a small red circle", "a large green cross"])


@entry("course_utils.captioning.grounding_hits", accept={"words:empty": "no words, no hits"})
def _():
    objects = [("small", "red", "circle"), ("large", "blue", "square")]
    cells = torch.zeros(2, 4, dtype=torch.bool)
    cells[0, 0] = cells[1, 3] = True
    att = torch.tensor([[0.25] * 4, [0.25] * 4, [0.4, 0.2, 0.2, 0.2], [0.6, 0.1, 0.1, 0.2]])
    return Call(CAP.grounding_hits, ["a", "small", "red", "circle"], att, objects, cells,
                criterion="mass")


@entry("course_utils.captioning.grounding_score")
def _():
    d = _scenes()
    words = [c.split() for c in d.captions]
    maps = softmax(len(d), 30, 16)
    return Call(CAP.grounding_score, words, maps, d, criterion="peak")


@entry("course_utils.captioning.evaluate")
def _():
    return Call(CAP.evaluate, _captioner(), _scenes(), beam_size=2, batch_size=3, max_len=6)


def _vqa(kind: str = "attention"):
    torch.manual_seed(0)
    d = _questions()
    job = VQA.VQAJob("v", kind, steps=2, lr=1e-3, batch_size=4,
                     model_kwargs={"dim": 8, "hidden": 8} if kind != "transformer" else
                     {"d_model": 8, "nhead": 2, "num_layers": 1, "dim_feedforward": 16})
    return VQA.build_model(job, len(d.vocab), len(d.answer_names)).eval()


@entry("course_utils.vqa.QuestionEncoder")
def _():
    return Call(VQA.QuestionEncoder, 30, dim=8, embed_dim=8, pad=0)


@entry("course_utils.vqa.QuestionEncoder.forward")
def _():
    torch.manual_seed(0)
    return Call(VQA.QuestionEncoder(30, dim=8, embed_dim=8).forward, _questions().tokens[:2])


@entry("course_utils.vqa.BlindVQA")
def _():
    return Call(VQA.BlindVQA, 30, 16, dim=8, hidden=8, dropout=0.1, pad=0)


@entry("course_utils.vqa.PooledVQA", accept={"encoder:empty": "the GridEncoder defaults"})
def _():
    return Call(VQA.PooledVQA, 30, 16, fusion="product", dim=8, hidden=8, dropout=0.1,
                image_size=32, grid=4, pad=0, encoder={"channels": 8})


@entry("course_utils.vqa.StackedAttentionVQA", accept={"encoder:empty": "the GridEncoder defaults"})
def _():
    return Call(VQA.StackedAttentionVQA, 30, 16, hops=2, dim=8, attn_dim=8, hidden=8, dropout=0.1,
                image_size=32, grid=4, pad=0, encoder={"channels": 8})


@entry("course_utils.vqa.TransformerFusionVQA", accept={"encoder:empty": "the GridEncoder defaults"})
def _():
    return Call(VQA.TransformerFusionVQA, 30, 16, d_model=8, nhead=2, num_layers=1,
                dim_feedforward=16, dropout=0.1, max_len=16, image_size=32, grid=4, pad=0,
                encoder={"channels": 8})


for _kind, _cls in (("blind", "BlindVQA"), ("concat", "PooledVQA"), ("attention",
                    "StackedAttentionVQA"), ("transformer", "TransformerFusionVQA")):
    def _factory(kind=_kind):
        d = _questions()
        return Call(_vqa(kind).forward, d.images[:2].float() / 255, d.tokens[:2])

    blind = {"images:*": "a blind model does not read the images (by design)"}
    entry(f"course_utils.vqa.{_cls}.forward", accept=blind if _kind == "blind" else {})(_factory)


@entry("course_utils.vqa.VQAJob", accept={"name:*": FREE_TEXT, "dataset:*": "a name of a set"})
def _():
    return Call(VQA.VQAJob, "v", "attention", steps=2, lr=1e-3, seed=1, batch_size=4, warmup=1,
                weight_decay=0.01, model_kwargs={"dim": 8}, dataset="relational")


@entry("course_utils.vqa.build_model")
def _():
    job = VQA.VQAJob("v", "concat", steps=2, lr=1e-3, model_kwargs={"dim": 8, "hidden": 8})
    return Call(VQA.build_model, job, 30, 16, image_size=32, grid=4)


@entry("course_utils.vqa.train_vqa", slow=True, accept={"desc:*": FREE_TEXT,
                                                        "seed:zero": ANY_SEED})
def _():
    return Call(VQA.train_vqa, _vqa().train(), _questions(), 2, batch_size=4, lr=1e-3, seed=1,
                warmup=1, weight_decay=0.01, clip=5.0, desc="training", progress=False,
                log_every=1)


@entry("course_utils.vqa.train_jobs", slow=True)
def _():
    job = VQA.VQAJob("v", "blind", steps=2, lr=1e-3, batch_size=4,
                     model_kwargs={"dim": 8, "hidden": 8})
    return Call(VQA.train_jobs, [job], _questions(), workers=1)


record("course_utils.vqa.TrainedJob", "a result record that train_jobs builds")


@entry("course_utils.vqa.settings_job")
def _():
    return Call(VQA.settings_job, "relational", "attention-2", seed=1, lr=1e-3, steps=5)


@entry("course_utils.vqa.load_datasets")
def _():
    return Call(VQA.load_datasets, "relational", n_train=8, n_valid=4, n_test=4, n_compositional=4)


@entry("course_utils.vqa.per_kind_accuracy")
def _():
    d = _questions()
    return Call(VQA.per_kind_accuracy, d.answers.roll(1), d)


@entry("course_utils.vqa.confusion_matrix")
def _():
    return Call(VQA.confusion_matrix, torch.tensor([0, 1, 2, 1]), torch.tensor([0, 2, 2, 1]), 3)


@entry("course_utils.vqa.grounding_score")
def _():
    focus = torch.zeros(2, 16, dtype=torch.bool)
    focus[0, 3] = focus[1, 5] = True
    return Call(VQA.grounding_score, softmax(2, 16), focus, criterion="peak")


@entry("course_utils.vqa.evaluate")
def _():
    return Call(VQA.evaluate, _vqa(), _questions(), batch_size=3, keep_maps=True)


# =============================================================================================
# Platform: runtime, precision, timing, training, distributed, loading, doctor, process_guard
# =============================================================================================
import sys  # noqa: E402

from course_utils import distributed as DI  # noqa: E402
from course_utils import doctor as DOC  # noqa: E402
from course_utils import loading as LO  # noqa: E402
from course_utils import precision as PR  # noqa: E402
from course_utils import process_guard as PG  # noqa: E402
from course_utils import runtime as RT  # noqa: E402
from course_utils import timing as TI  # noqa: E402
from course_utils import training as TRN  # noqa: E402

for _name in ("fast_mode", "current_run"):
    record(f"course_utils.runtime.{_name}", "takes no argument")
record("course_utils.runtime.NotebookRun", "a result record that setup_notebook builds")


@entry("course_utils.runtime.by_mode", accept={"full:*,fast:*": "any value, returned as is"})
def _():
    return Call(RT.by_mode, 10, 2)


@entry("course_utils.runtime.get_device")
def _():
    return Call(RT.get_device, "cpu")


@entry("course_utils.runtime.seed_everything", accept={"seed:zero": ANY_SEED,
                                                      "seed:negative": "torch.manual_seed takes any seed in [-2**63, 2**64)"})
def _():
    return Call(RT.seed_everything, 3, deterministic=False)


@entry("course_utils.runtime.setup_notebook", accept={"name:*": FREE_TEXT,
                                                      "seed:zero": ANY_SEED,
                                                      "seed:negative": "torch.manual_seed takes any seed in [-2**63, 2**64)"})
def _():
    return Call(RT.setup_notebook, "99_census", seed=1, device="cpu", quiet=True)


record("course_utils.precision.enable_tf32", "takes no argument")
record("course_utils.precision.PrecisionReport", "a result record that precision_report builds")


@entry("course_utils.precision.cuda_bf16_native")
def _():
    return Call(PR.cuda_bf16_native, "cpu")


@entry("course_utils.precision.amp_dtype")
def _():
    return Call(PR.amp_dtype, "cpu")


@entry("course_utils.precision.precision_report")
def _():
    return Call(PR.precision_report, "cpu")


@entry("course_utils.precision.MixedPrecision")
def _():
    return Call(PR.MixedPrecision, "cpu", enabled=True, dtype=torch.bfloat16)


@entry("course_utils.precision.MixedPrecision.step",
       accept={"loss:float64": "a float64 loss backpropagates as any float loss (step returns "
                               "nothing to compare)",
               "loss:nan,loss:inf": "the training loops read their losses in blocks and stop at "
                                    "the first non-finite one naming the step (NonFiniteLossError); "
                                    "step() does not read the loss, which would stall a GPU"})
def _():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(randn(2, 3)).pow(2).mean()
    return Call(PR.MixedPrecision("cpu").step, loss, opt, clip_grad_norm=1.0,
                parameters=list(model.parameters()))


record("course_utils.timing.BenchmarkResult", "a result record that benchmark builds")
record("course_utils.timing.PairedComparison", "a result record that compare_until_separated builds")
record("course_utils.timing.CudaTimer", "takes no argument")


@entry("course_utils.timing.benchmark", accept={"label:*": FREE_TEXT,
                                              "args[*]:*": "passed to fn as they are",
                                              "warmup:zero": "no warm-up call"})
def _():
    return Call(TI.benchmark, torch.add, randn(4), randn(4, seed=1), label="add", num_threads=1,
                min_run_time=0.01, warmup=1, min_blocks=2)


@entry("course_utils.timing.compare")
def _():
    a = TI.BenchmarkResult("a", 1e-3, 1e-4, 1e-3, 7, 1)
    b = TI.BenchmarkResult("b", 2e-3, 1e-4, 2e-3, 7, 1)
    return Call(TI.compare, [a, b], baseline="a")


@entry("course_utils.timing.compare_until_separated", accept={"label_*:*": FREE_TEXT,
                                                            "warmup:zero": "no warm-up call"})
def _():
    return Call(TI.compare_until_separated, lambda: sum(range(10)), lambda: sum(range(2000)),
                label_a="short", label_b="long", min_rounds=3, max_rounds=6, max_seconds=2.0,
                warmup=1)


@entry("course_utils.timing.synchronize")
def _():
    return Call(TI.synchronize, "cpu")


@entry("course_utils.timing.profile_table",
       accept={"sort_by:None": "torch.profiler's own choice: the rows in the order they ran"})
def _():
    return Call(TI.profile_table, lambda: torch.ones(8) @ torch.ones(8), steps=2,
                sort_by="self_cpu_time_total", row_limit=3, device="cpu")


record("course_utils.training.NonFiniteLossError", "an exception class the course raises")
record("course_utils.training.TrainHistory", "a result record that train_steps builds")


@entry("course_utils.training.train_steps",
       accept={"desc:*": FREE_TEXT,
               "num_steps:zero": "no step to take: an empty history (a run already finished)"},
       documented=(TRN.NonFiniteLossError,))
def _():
    return Call(TRN.train_steps, lambda i: 1.0 / (i + 1), 4, desc="training", log_every=2,
                disable_progress=True, sync_every=2)


@entry("course_utils.distributed.choose_backend")
def _():
    return Call(DI.choose_backend, "cpu")


record("course_utils.distributed.DistContext", "a result record that init_distributed builds")
record("course_utils.distributed.MemoryEstimate", "a result record that training_memory builds")
record("course_utils.distributed.cleanup_distributed", "takes no argument")


@entry("course_utils.distributed.init_distributed")
def _():
    def init(backend=None, device=None, timeout_s=120.0):
        try:
            return DI.init_distributed(backend, device, timeout_s)
        finally:
            DI.cleanup_distributed()

    init.__signature__ = __import__("inspect").signature(DI.init_distributed)
    return Call(init, "gloo", "cpu", timeout_s=30.0)


@entry("course_utils.distributed.free_port")
def _():
    return Call(DI.free_port, "127.0.0.1")


@entry("course_utils.distributed.rank_zero_print", accept={"*": "print takes anything"})
def _():
    return Call(DI.rank_zero_print, "hello", 3)


@entry("course_utils.distributed.progress", accept={
    "iterable:str": "any iterable",
    "disable:None": "tqdm's own choice: no bar when the output is not a terminal"})
def _():
    return Call(DI.progress, range(3), disable=True)


@entry("course_utils.distributed.unwrap")
def _():
    return Call(DI.unwrap, nn.Linear(2, 2))


@entry("course_utils.distributed.flat_parameters")
def _():
    return Call(DI.flat_parameters, nn.Linear(2, 2))


@entry("course_utils.distributed.ranks_identical")
def _():
    return Call(DI.ranks_identical, nn.Linear(2, 2))


@entry("course_utils.distributed.all_reduce_mean",
       accept={"value:negative": "any number has a mean"})
def _():
    return Call(DI.all_reduce_mean, 2.5, device="cpu")


@entry("course_utils.distributed.training_memory")
def _():
    return Call(DI.training_memory, 1000, world_size=2, strategy="fsdp")


@entry("course_utils.distributed.torchrun_command",
       accept={"script_args:empty": "a script without arguments",
               "script:unknown": "only a command line: the script may live on another node",
               "rdzv_id:unknown": "any job name"})
def _():
    return Call(DI.torchrun_command, "train.py", ["--steps", "3"], nproc_per_node=2, nnodes=1,
                rdzv_endpoint="localhost:29500", rdzv_id="job")


@entry("course_utils.distributed.LaunchPlan", accept={"reason:*": FREE_TEXT})
def _():
    return Call(DI.LaunchPlan, nproc=2, backend="gloo", device="cpu", gpus=0, reason="no GPU")


@entry("course_utils.distributed.launch_plan")
def _():
    return Call(DI.launch_plan, 2, device="cpu")


_SCRIPT = "import sys; print('ok', sys.argv[1:])\n"


@entry("course_utils.distributed.run_torchrun", slow=True, timeout=120,
       accept={"args:empty": "a script without arguments"})
def _():
    script = tmpdir() / "hello.py"
    script.write_text(_SCRIPT, encoding="utf-8")
    plan = DI.LaunchPlan(nproc=1, backend="gloo", device="cpu", gpus=0, reason="census")
    return Call(DI.run_torchrun, plan, script, ["--x"], timeout=60.0, cwd=script.parent)


@entry("course_utils.distributed.saved_activation_bytes")
def _():
    w = torch.ones(4, requires_grad=True)
    return Call(DI.saved_activation_bytes, lambda: (w * w).sum())


@entry("course_utils.process_guard.descendants",
       accept={"pid:zero": "documented: empty when there is no such process"})
def _():
    import os

    return Call(PG.descendants, os.getpid())


@entry("course_utils.process_guard.end_process_tree",
       accept={"root:zero": "no such process: nothing to end"})
def _():
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    return Call(PG.end_process_tree, proc.pid, known=(), grace_s=1.0)


@entry("course_utils.process_guard.run_process_tree", timeout=60)
def _():
    return Call(PG.run_process_tree, [sys.executable, "-c", "print('ok')"], 30.0, env=None,
                cwd=None, watchdog=False)


record("course_utils.process_guard.ProcessTreeTimeout", "an exception class the course raises")


def _layouts_root() -> Path:
    root = tmpdir()
    images, labels = LO.make_image_dataset(6, size=8)
    LO.write_layouts(images, labels, root, samples_per_shard=4)
    return root


@entry("course_utils.loading.make_image_dataset", accept={"seed:zero": ANY_SEED})
def _():
    return Call(LO.make_image_dataset, 4, size=8, seed=1)


@entry("course_utils.loading.encode_png", accept={
    "image:negative": "a uint8 tensor cannot hold -1: the pixel wraps to 255, a valid value",
    "image:size": "an image of any width"})
def _():
    return Call(LO.encode_png, torch.randint(0, 255, (8, 8), dtype=torch.uint8))


@entry("course_utils.loading.decode_png")
def _():
    return Call(LO.decode_png, LO.encode_png(torch.zeros(8, 8, dtype=torch.uint8)))


@entry("course_utils.loading.write_layouts", accept={
    "images:negative": "a uint8 tensor cannot hold -1: the pixel wraps to 255, a valid value",
    "images:size": "images of any width",
    "labels:huge": "any class id >= 0 is stored as it is"})
def _():
    images, labels = LO.make_image_dataset(6, size=8)
    return Call(LO.write_layouts, images, labels, tmpdir(), samples_per_shard=4, progress=None)


record("course_utils.loading.StoredLayout", "a result record that write_layouts builds")
record("course_utils.loading.EvictionReport", "a result record of the page-cache functions")
record("course_utils.loading.page_cache_eviction", "takes no argument")


@entry("course_utils.loading.PngFilesDataset", documented=(FileNotFoundError,))
def _():
    return Call(LO.PngFilesDataset, _layouts_root() / "png_files")


@entry("course_utils.loading.TarShardsDataset", documented=(FileNotFoundError,))
def _():
    return Call(LO.TarShardsDataset, _layouts_root() / "tar_shards")


@entry("course_utils.loading.MemmapDataset", documented=(FileNotFoundError,))
def _():
    return Call(LO.MemmapDataset, _layouts_root() / "memmap")


@entry("course_utils.loading.InMemoryDataset", accept={
    "images:negative": "a uint8 tensor cannot hold -1: the pixel wraps to 255, a valid value",
    "images:size": "images of any width",
    "labels:huge": "any class id >= 0 is kept as it is"})
def _():
    images, labels = LO.make_image_dataset(4, size=8)
    return Call(LO.InMemoryDataset, images, labels)


@entry("course_utils.loading.ShardStreamSampler", accept={"seed:zero": ANY_SEED})
def _():
    return Call(LO.ShardStreamSampler, LO.TarShardsDataset(_layouts_root() / "tar_shards"), seed=1)


@entry("course_utils.loading.open_layout", documented=(FileNotFoundError,))
def _():
    return Call(LO.open_layout, "memmap", _layouts_root() / "memmap")


@entry("course_utils.loading.evict_from_page_cache", documented=(FileNotFoundError,),
       accept={"paths:empty": "no files: nothing to evict"})
def _():
    root = _layouts_root()
    return Call(LO.evict_from_page_cache, [root / "memmap" / "labels.npy"])


@entry("course_utils.loading.read_bandwidth", documented=(FileNotFoundError,))
def _():
    return Call(LO.read_bandwidth, _source_file(), chunk=4096)


@entry("course_utils.loading.predict_epoch_seconds",
       accept={"files:zero,nbytes:zero": "a layout with nothing to read costs nothing"})
def _():
    return Call(LO.predict_epoch_seconds, 10, 1e-4, 10_000, 1e8, samples=100, decode_s=1e-5,
                batch_s=1e-6)


@entry("course_utils.loading.loader_samples_per_s", accept={"seed:zero": ANY_SEED})
def _():
    images, labels = LO.make_image_dataset(8, size=8)
    return Call(LO.loader_samples_per_s, LO.InMemoryDataset(images, labels), num_workers=0,
                batch_size=4, seed=1, device="cpu", pin_memory=False, sampler=None)


@entry("course_utils.loading.LoadingStudy", slow=True)
def _():
    return Call(LO.LoadingStudy, tmpdir(), 6, image_size=8, samples_per_shard=4, progress=None)


@entry("course_utils.loading.run_study", slow=True, timeout=120)
def _():
    return Call(LO.run_study, tmpdir(), 130, image_size=8, workers=(0,), batch_size=64,
                device="cpu", progress=None)


record("course_utils.doctor.run_checks", "takes no argument")
record("course_utils.doctor.main", "takes no argument (a command-line entry point)")
record("course_utils.doctor.Check", "a result record that run_checks builds")


@entry("course_utils.doctor.report_dtype")
def _():
    return Call(DOC.report_dtype, PR.precision_report("cpu"))


# =============================================================================================
# course_utils.plotting
# =============================================================================================
from course_utils import plotting as PLOT  # noqa: E402

PLOT_TEXT = {"title:*,xlabel:*,ylabel:*,cbar_label:*,titles:unknown,note:*": FREE_TEXT,
             "x_labels:item,y_labels:item,titles:item": "matplotlib shows any label",
             "cmap:None,alpha:None": "matplotlib's default",
             "vmin:negative,vmax:negative": "any colour range",
             "weights:nan,weights:inf,image:nan,image:inf,attention:nan,attention:inf":
                 "drawn as it is: a NaN cell shows blank",
             "image:float64,attention:float64": "drawn: the precision does not matter",
             "image:size,attention:size": "any size", "band:empty": "no band"}


@entry("course_utils.plotting.plot_attention", accept=PLOT_TEXT)
def _():
    return Call(PLOT.plot_attention, softmax(2, 3, 4), x_labels=["a", "b", "c", "d"],
                y_labels=["x", "y", "z"], titles=["head 1", "head 2"], title="weights",
                xlabel="keys", ylabel="queries", ncols=2, cmap="viridis", vmin=0.0, vmax=1.0,
                annotate=True, cell_size=0.35, cbar_label="weight")


@entry("course_utils.plotting.plot_attention_overlay", accept={
    **PLOT_TEXT, "image:rank-": "the image (3, 16, 16) without its last dim is (3, 16): a valid "
                                "grey (H, W) image, drawn as one"})
def _():
    return Call(PLOT.plot_attention_overlay, torch.rand(3, 16, 16), softmax(2, 4, 4),
                titles=["a", "b"], title="where", alpha=0.6, cmap="magma", ncols=2)


@entry("course_utils.plotting.plot_learning_curves", accept=PLOT_TEXT)
def _():
    return Call(PLOT.plot_learning_curves, {"a": [3.0, 2.0, 1.5, 1.2], "b": [3.0, 2.5, 2.0, 1.9]},
                title="curves", xlabel="step", ylabel="loss", logy=True, smooth=2,
                band={"a": ([2.5, 1.5, 1.0, 1.0], [3.5, 2.5, 2.0, 1.4])})


@entry("course_utils.plotting.plot_time_series", accept=PLOT_TEXT)
def _():
    return Call(PLOT.plot_time_series, {"time_s": [0.0, 0.5, 1.0], "CPU (%)": [10.0, 50.0, 20.0]},
                x="time_s", title="use", note="no GPU")


# =============================================================================================
# course_utils.checks: the helpers themselves (their own arguments)
# =============================================================================================
from course_utils import checks as CH  # noqa: E402

SPEC = "written by the course's own code (the specification), not an input"
CHECK_ACCEPT = {
    "*:nan,*:inf": "the value is checked for what the helper checks (finiteness has its own)",
}


def _check(fn, *args, values=(), accept=None, **kwargs):
    """A check helper: only its *values* are mutated (``values``); its label (``name``) and its
    specification (dims, bounds, shapes, the module's weight) come from the course's code."""
    import inspect

    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    skip = {p.name: SPEC for p in params if p.name not in values}
    skip.update({k: SPEC for k in kwargs if k not in values})
    return entry(f"course_utils.checks.{fn.__name__}", skip=skip,
                 accept={**CHECK_ACCEPT, **(accept or {})})(lambda: Call(fn, *args, **kwargs))


ANY_INT = "any int passes the check (it checks the kind, not the sign)"
_check(CH.describe, torch.zeros(2, 3), values=("x",), accept={"x:*": "describes anything"})
_check(CH.check_int, "n", 3, low=0, high=5, values=("n",), accept={"n:zero": "0 is in [0, 5]"})
_check(CH.check_positive_int, "n", 3, values=("n",))
_check(CH.check_non_negative_int, "n", 3, values=("n",), accept={"n:zero": "zero is >= 0"})
_check(CH.check_real, "x", 0.5, 0.0, 1.0, low_open=False, high_open=True, values=("x",))
_check(CH.check_probability, "p", 0.1, values=("p",))
_check(CH.check_bool, "x", True, values=("x",))
_check(CH.check_one_of, "x", "relu", ("relu", "gelu"), values=("x",))
_check(CH.check_str, "x", "hello", allow_empty=False, values=("x",),
       accept={"x:unknown": "any non-empty text"})
_check(CH.check_sequence_of_str, "xs", ["a", "b"], allow_empty=False, values=("xs",))
_check(CH.check_tensor, "t", torch.zeros(2, 3), dims=2, values=("t",),
       accept={"t:int dtype,t:float64,t:empty,t:size,t:meta": "any tensor of 2 dims"})
_check(CH.check_float_tensor, "t", torch.zeros(2, 3), dims=2, min_dims=1, values=("t",),
       accept={"t:float64,t:empty,t:size,t:meta": "any float tensor of 2 dims"})
_check(CH.check_shape, "t", torch.zeros(2, 3), (None, 3), what="(B, 3)", values=("t",),
       accept={"t:int dtype,t:float64,t:empty,t:meta": "the shape is right; dtype and "
               "device have their own checks"})
_check(CH.check_finite, "t", torch.zeros(2, 3), values=("t",),
       accept={"t:int dtype,t:float64,t:empty,t:rank*,t:size": "finite values, any shape",
               "t:meta": "a meta tensor has no values to check"})
_check(CH.check_same_device, a=torch.zeros(2), b=torch.zeros(3), values=("a", "b"),
       accept={"*:None": "an optional tensor left out", "*:int dtype,*:float64,*:empty,*:rank*,*:size": "one device; the rest is not "
               "its check"})
_check(CH.check_same_dtype, a=torch.zeros(2), b=torch.zeros(3), values=("a", "b"),
       accept={"*:None": "an optional tensor left out", "*:empty,*:rank*,*:size,*:meta": "one dtype; the rest is not its check"})
_check(CH.check_mask, "mask", torch.ones(4, 5, dtype=torch.bool), shape=(2, 4, 5), device="cpu",
       values=("mask",), accept={"mask:float dtype": "a float mask is added to the scores",
                                 "mask:rank-": "a mask broadcasts", "mask:empty": "a mask of "
                                 "(0, 5) broadcasts to (2, 4, 5) only if... see the message"})
_check(CH.check_token_ids, "ids", torch.tensor([[1, 2]]), vocab_size=5, values=("ids",),
       accept={"ids:empty,ids:rank*,ids:size": "ids of any shape",
               "ids:meta": "a meta tensor has no values to check"})
_check(CH.broadcasts_to, (1, 5), (3, 4, 5), values=("shape", "target"),
       accept={"*:empty": "() broadcasts to any shape; a shape broadcasts to () only if empty",
               "*:item": "answers False"})
_check(CH.check_qkv, randn(2, 3, 4), randn(2, 5, 4), randn(2, 5, 6), dims=3, broadcast=True,
       attn_mask=torch.ones(3, 5, dtype=torch.bool), values=("q", "k", "v", "attn_mask"),
       accept={"q:empty,k:empty,v:empty,q:meta,k:meta,v:meta,attn_mask:meta":
               "see check_qkv's contract", "attn_mask:float dtype": "a float mask is added",
               "attn_mask:rank-": "a mask broadcasts", "v:size": "Dv may differ from D"})
_check(CH.check_like_module, "x", torch.zeros(2, 3), torch.zeros(4, 3), values=("x",),
       accept={"x:empty,x:rank*,x:size": "dtype and device only"})
_check(CH.check_padding_mask, "mask", torch.zeros(2, 3, dtype=torch.bool), 2, 3, device="cpu",
       values=("mask",))
_check(CH.check_module_input, "t", torch.zeros(2, 3, 8), torch.zeros(4, 8), (None, None, 8),
       what="(B, T, 8)", values=("t",), accept={"t:empty": "an empty batch of the right shape"})
_check(CH.check_divisible, "n", 8, "by", 4, values=("n", "by"))
_check(CH.check_instance, "x", nn.Linear(2, 2), nn.Module, values=("x",))
_check(CH.check_broadcasts, "t", torch.zeros(1, 4), (3, 4), what="scores", values=("t",),
       accept={"t:rank-,t:int dtype,t:float64,t:meta": "broadcasting only"})
_check(CH.check_max_len, 4, 10, offset=2, what="x", values=("length", "offset"),
       accept={"length:zero": "no position at all fits"})
_check(CH.check_int_tensor, "t", torch.tensor([1, 2]), dims=1, last_dim=2, device="cpu",
       what="(2,)", values=("t",), accept={"t:negative,t:huge": ANY_INT})
_check(CH.check_same_size, 0, "the batch", a=torch.zeros(2, 3), b=torch.zeros(2, 4),
       values=("a", "b"), accept={"*:float64,*:meta,*:rank*,*:size": "one size along dim 0"})
_check(CH.check_sequences, torch.zeros(8, 8), batch_first=True, same_length=False,
       query=(torch.zeros(2, 5, 8), 8), key=(torch.zeros(2, 4, 8), 8), values=())
_check(CH.check_sizes, 1, a=2, b=3, values=("a", "b"))
_check(CH.check_sequence_input, "x", torch.zeros(2, 5, 8), 8, device="cpu", offset=1, max_len=10,
       width_name="d_model", values=("x", "offset"), accept={"x:empty": "an empty batch"})
_check(CH.check_broadcast_to, "target", torch.zeros(2, 3, 4), cos=torch.zeros(3, 4),
       values=("target", "cos"), accept={"*:float64,*:int dtype": "shape and device only",
                                         "target:empty": "(0, 3, 4): (3, 4) broadcasts to it"})
_check(CH.check_device, "device", "cpu", values=("device",))
_check(CH.check_path, "path", "reports/metrics.json", values=("path",),
       accept={"path:unknown": "any path"})
_check(CH.check_bools, values=(), causal=True, need_weights=False)
_check(CH.check_optional_sizes, values=(), kdim=4, vdim=None)
_check(CH.check_dtype, "dtype", torch.float32, floating=True, values=("dtype",))
_check(CH.check_instances, values=(), cache=(torch.zeros(2), torch.Tensor))
_check(CH.check_callable, "fn", len, values=("fn",))
_check(CH.check_grouped_heads, torch.zeros(1, 4, 2, 8), torch.zeros(1, 2, 3, 8),
       torch.zeros(1, 2, 3, 8), values=("q", "k", "v"),
       accept={"*:int dtype,*:float64,*:size,*:meta":
               "the batch and head counts fit; dtype, device and sizes have their own checks"})
_check(CH.check_on_device, "t", torch.zeros(2, 3), torch.device("cpu"), of="the model",
       values=("t",), accept={"t:int dtype,t:float64,t:empty,t:rank*,t:size":
                              "any tensor on the device; the rest is not its check"})
_check(CH.check_optional_padding_mask, "mask", torch.zeros(2, 3, dtype=torch.bool),
       torch.zeros(2, 3, 8), values=("mask",),
       accept={"mask:None": "no padding", "mask:meta": "the device is checked, not the values"})


# =============================================================================================
# course_utils.datasets (package), course_utils.exercises (framework and checkers)
# =============================================================================================
from course_utils import exercises as EX  # noqa: E402

record("course_utils.datasets.data_sources", "takes no argument")
record("course_utils.exercises.exercises", "takes no argument")
record("course_utils.exercises.CheckResult", "a result record that the checkers build")
record("course_utils.exercises.Exercise", "a record that the exercise decorator builds")
record("course_utils.exercises.UnknownExercise", "an exception class the course raises")


@entry("course_utils.exercises.ok", accept={"message:*": FREE_TEXT})
def _():
    return Call(EX.ok, "Correct!")


@entry("course_utils.exercises.fail", accept={"kind:*,message:*": FREE_TEXT})
def _():
    return Call(EX.fail, "values", "off by one")


@entry("course_utils.exercises.Mistake", accept={"name:*,says:*": FREE_TEXT,
                                                 "args:empty": "a checker without arguments"})
def _():
    return Call(EX.Mistake, "forgot to scale", (lambda x: x,), "scale")


@entry("course_utils.exercises.exercise", accept={"title:*,hint:*": FREE_TEXT})
def _():
    def sol():
        return 1

    return Call(EX.exercise, "99.1", title="A census exercise", hint="Return 1.", solution=sol,
                kind="predict", minutes=5, difficulty=1, mistakes=[], solution_args=None)


@entry("course_utils.exercises.check", checker=True,
       accept={"answer[0]:None": "the stub's value: 'not attempted yet'"})
def _():
    return Call(EX.check, "01.1", *EX.solution_answer("01.1"))


@entry("course_utils.exercises.solution")
def _():
    return Call(EX.solution, "01.1", show=False)


@entry("course_utils.exercises.solution_function")
def _():
    return Call(EX.solution_function, "01.1")


@entry("course_utils.exercises.solution_answer")
def _():
    return Call(EX.solution_answer, "01.1")


CHECKER_ACCEPT = {
    "course_utils.exercises.nb00.check_adam_state_bytes":
        {"prediction:float": "half a byte off: within the checker's tolerance"},
    "course_utils.exercises.nb10.check_copy_source":
        {"bleu:negative": "-0.036 is within the tolerance of the measured BLEU 0.04"},
}


def _register_checkers() -> None:
    """One entry per exercise checker: the learner's answer goes through ``check``."""
    import inspect

    for ex in EX.exercises().values():
        module = sys.modules[ex.checker.__module__]
        name = f"{module.__name__}.{ex.checker.__name__}"

        def factory(ex=ex):
            def run(*answer, **kwargs):
                return EX.check(ex.id, *answer, **kwargs)

            run.__signature__ = inspect.signature(ex.checker)
            return Call(run, *EX.solution_answer(ex.id))

        entry(name, checker=True, slow=True, timeout=120,
              accept=CHECKER_ACCEPT.get(name, {}))(factory)


_register_checkers()


# =============================================================================================
# The census's own test (CENSUS_SELFTEST=1): a function that never returns for some input
# =============================================================================================
if __import__("os").environ.get("CENSUS_SELFTEST") == "1":

    def spin(n: int) -> int:
        """Counts to ``|n|``; for a negative ``n`` it never stops (the census must call it a
        hang); a str or None fails inside ``abs`` (obscure); 0 returns at once (silent)."""
        i = 0
        while i < abs(n) or n < 0:
            i += 1
        return i

    entry("selftest.spin", timeout=3)(lambda: Call(spin, 3))


# =============================================================================================
# Re-exports: one object under several public names is censused once, where it is defined
# =============================================================================================
def _censor_re_exports() -> None:
    import importlib

    from census_engine import REGISTRY, Entry, public_names

    by_object: dict[int, list[str]] = {}
    objects = {}
    for module, names in public_names().items():
        for n in names:
            obj = getattr(importlib.import_module(module), n)
            by_object.setdefault(id(obj), []).append(f"{module}.{n}")
            objects[id(obj)] = obj
    for key, names in by_object.items():
        if len(names) < 2:
            continue
        home = getattr(objects[key], "__module__", "")
        canonical = next((n for n in names if n.rsplit(".", 1)[0] == home), names[0])
        for n in names:
            if n != canonical:
                REGISTRY[n] = Entry(n, None, record=f"the same object as {canonical} (re-exported "
                                                    "here): censused there")


_censor_re_exports()
