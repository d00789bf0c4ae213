"""course_utils.checkpoint: config + versions stored, weights_only loading, mismatches explained."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch
from torch import nn

import course_utils
from course_utils import checkpoint as ck
from course_utils.attention import MultiHeadAttention
from course_utils.checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from course_utils.transformer import TransformerEncoderLayer


def _layer(d_model=16, nhead=4, dim_feedforward=32):
    return TransformerEncoderLayer(d_model, nhead, dim_feedforward=dim_feedforward, dropout=0.0)


def test_round_trip_keeps_weights_optimizer_config_and_versions(tmp_path):
    torch.manual_seed(0)
    model = _layer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 5, 16)).sum().backward()
    opt.step()
    config = {"d_model": 16, "nhead": 4, "dim_feedforward": 32, "dtype": torch.float32, "sizes": [1, (2, 3)]}
    path = save_checkpoint(tmp_path / "ckpt" / "enc.pt", model, opt, config=config,
                           extra={"val_loss": 0.5, "mean": torch.zeros(3)}, step=123)
    assert sorted(p.name for p in path.parent.iterdir()) == ["enc.pt"]  # no temporary file left

    fresh = _layer()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    ckpt = load_checkpoint(path, fresh, fresh_opt)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert ckpt["config"] == {**config, "sizes": [1, (2, 3)]}
    assert ckpt["step"] == 123 and ckpt["extra"]["val_loss"] == 0.5
    assert ckpt["model_class"] == "course_utils.transformer.TransformerEncoderLayer"
    assert ckpt["versions"]["torch"] == torch.__version__
    assert ckpt["versions"]["course_utils"] == course_utils.__version__
    assert re.match(r"\d+\.\d+", ckpt["versions"]["python"])


def test_shape_mismatch_names_key_expected_and_received(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", _layer(dim_feedforward=32), config={"dim_feedforward": 32})
    target = _layer(dim_feedforward=64)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, target)
    msg = str(err.value)
    assert str(path) in msg
    assert "linear1.weight: model expects (64, 16), checkpoint has (32, 16)" in msg
    assert "linear1.bias: model expects (64,), checkpoint has (32,)" in msg
    assert "linear2.weight: model expects (16, 64), checkpoint has (16, 32)" in msg
    assert "{'dim_feedforward': 32}" in msg  # the config to build the right model with
    assert isinstance(err.value, ValueError)
    for k, v in target.state_dict().items():  # nothing was half-loaded
        assert torch.equal(v, before[k]), k


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path = save_checkpoint(tmp_path / "mha.pt", MultiHeadAttention(16, 4, bias=True))
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, MultiHeadAttention(16, 4, bias=False))
    msg = str(err.value)
    assert "unexpected in the checkpoint (4): q_proj.bias, k_proj.bias, v_proj.bias, out_proj.bias" in msg

    path2 = save_checkpoint(tmp_path / "mha2.pt", MultiHeadAttention(16, 4, bias=False))
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint \(4\): q_proj\.bias"):
        load_checkpoint(path2, MultiHeadAttention(16, 4, bias=True))


def test_a_different_model_class_lists_keys_and_saved_class(tmp_path):
    path = save_checkpoint(tmp_path / "lin.pt", nn.Linear(3, 4), config={"in": 3, "out": 4})
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, MultiHeadAttention(16, 4))
    msg = str(err.value)
    assert "missing from the checkpoint (8): q_proj.weight" in msg
    assert "unexpected in the checkpoint (2): weight, bias" in msg
    assert "saved from torch.nn.modules.linear.Linear with config {'in': 3, 'out': 4}" in msg


def test_many_mismatches_are_listed_with_a_count(tmp_path):
    big = nn.Sequential(*[nn.Linear(4, 4) for _ in range(10)])
    path = save_checkpoint(tmp_path / "big.pt", big)
    with pytest.raises(CheckpointMismatchError, match=r"20 shape mismatches: .*… \(12 more\)"):
        load_checkpoint(path, nn.Sequential(*[nn.Linear(5, 5) for _ in range(10)]))


def test_strict_false_skips_keys_but_never_shapes(tmp_path):
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(3, 3))
    path = save_checkpoint(tmp_path / "s.pt", src)
    dst = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    load_checkpoint(path, dst, strict=False)
    assert torch.equal(dst[0].weight, src[0].weight)
    with pytest.raises(CheckpointMismatchError, match=r"0\.weight: model expects \(2, 3\), checkpoint has \(3, 3\)"):
        load_checkpoint(path, nn.Sequential(nn.Linear(3, 2)), strict=False)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nope\.pt: check the path"):
        load_checkpoint(tmp_path / "nope.pt", nn.Linear(2, 2))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_truncated_or_corrupt_file_names_it(tmp_path, damage):
    path = save_checkpoint(tmp_path / "c.pt", nn.Linear(64, 64))
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is not a readable checkpoint \(truncated or corrupt"):
        load_checkpoint(path, nn.Linear(64, 64))


class _Evil:
    """A pickle that would create a file when unpickled without weights_only."""

    marker: pathlib.Path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "model": {}, "config": evil, "versions": {}}, path)
    with pytest.raises(ValueError, match=r"could not be loaded with weights_only=True: it holds a "
                       r"Python object \(\S+\)") as info:
        load_checkpoint(path)
    assert "truncated or corrupt" not in str(info.value)
    assert not evil.marker.exists()


def test_a_checkpoint_mapped_to_a_missing_gpu_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    path = save_checkpoint(tmp_path / "k.pt", nn.Linear(2, 2))
    for where in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match=r"asks for a CUDA GPU, but this machine has none: load with map_location='cpu'"):
            load_checkpoint(path, map_location=where)
    with pytest.raises(ValueError, match="map_location must be a device such as 'cpu'"):
        load_checkpoint(path, map_location="gpu please")


def test_an_optimizer_state_of_a_differently_shaped_model_is_refused(tmp_path):
    small, big = nn.Linear(2, 2), nn.Linear(3, 3)  # the same number of parameters (weight, bias)
    opt = torch.optim.Adam(small.parameters())
    small(torch.randn(4, 2)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "a.pt", small, opt)
    with pytest.raises(ValueError, match=r"parameter 0 of group 0 has shape \(3, 3\), its saved 'exp_avg' has "
                                         r"shape \(2, 2\)"):
        load_checkpoint(path, optimizer=torch.optim.Adam(big.parameters()))


def test_a_bare_state_dict_is_explained(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ValueError, match=r"not a course_utils checkpoint .*got \['bias', 'weight'\].*load_state_dict"):
        load_checkpoint(path, nn.Linear(2, 2))


def test_config_must_be_plain_data(tmp_path):
    with pytest.raises(TypeError, match=r"config\['act'\] must hold plain data only .*torch\.nn\.modules\.activation\.ReLU"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2), config={"act": nn.ReLU()})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "k.pt", nn.Linear(2, 2), step=1)

    def broken_save(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, nn.Linear(2, 2), step=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_optimizer_mismatch_and_absence(tmp_path):
    model = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "o.pt", model, torch.optim.SGD(model.parameters(), lr=0.1))
    other = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"optimizer state in .*o\.pt does not fit this optimizer"):
        load_checkpoint(path, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    path2 = save_checkpoint(tmp_path / "n.pt", model)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_checkpoint(path2, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        save_checkpoint(tmp_path / "x.pt", {"w": torch.zeros(1)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step must be a non-negative int or None, got -1"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(1, 1), step=-1)
