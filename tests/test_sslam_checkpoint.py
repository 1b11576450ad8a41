"""Loading SSLAM weights from every released layout, and the errors for files that do not fit."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from pal.encoders.sslam.checkpoint import load_sslam
from pal.encoders.sslam.model import PRESETS, SSLAMEncoder


def _tiny_state():
    torch.manual_seed(0)
    model = SSLAMEncoder(PRESETS["tiny"])
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _decoder_and_teacher(state):
    extra = {f"modality_encoders.IMAGE.decoder.blocks.{i}.0.weight": torch.randn(128, 8, 3, 3) for i in range(2)}
    teacher = {k: v + 1 for k, v in state.items()}  # a different network: loading it by mistake would show
    return extra, teacher


def _same(model_a, model_b):
    spec = torch.randn(1, 64, 128)
    with torch.no_grad():
        return torch.equal(model_a(spec).last_hidden_state, model_b(spec).last_hidden_state)


def test_fairseq_pretraining_checkpoint_uses_the_student(tmp_path):
    model, state = _tiny_state()
    decoder, teacher = _decoder_and_teacher(state)
    ckpt = {"cfg": {"model": {"depth": 2}}, "model": {**state, **decoder, "_ema": teacher},
            "optimizer_history": [{"num_updates": 10}], "extra_state": {"epoch": 1}}
    torch.save(ckpt, tmp_path / "checkpoint_last.pt")
    loaded = load_sslam(tmp_path / "checkpoint_last.pt")
    assert loaded.config.depth == 2 and loaded.config.embed_dim == 128 and loaded.config.num_heads == 2
    assert _same(model.eval(), loaded)


def test_finetuned_checkpoint_with_model_prefix_and_head(tmp_path):
    model, state = _tiny_state()
    ft = {f"model.{k}": v for k, v in state.items()}
    ft.update({"model.fc_norm.weight": torch.ones(128), "model.head.weight": torch.randn(527, 128)})
    torch.save({"model": ft}, tmp_path / "checkpoint_best.pt")
    assert _same(model.eval(), load_sslam(tmp_path / "checkpoint_best.pt"))


def test_hf_style_folder_with_a_prefix(tmp_path):
    model, state = _tiny_state()
    save_file({f"encoder.{k}": v.half() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    loaded = load_sslam(tmp_path)
    spec = torch.randn(1, 64, 128)
    with torch.no_grad():  # float16 storage: close, not equal
        # fp16 storage: weights rounded to 2^-11 relative; through 2 blocks of width 128 the outputs move by ~1e-2
        torch.testing.assert_close(loaded(spec).last_hidden_state, model.eval()(spec).last_hidden_state,
                                   atol=5e-2, rtol=0)


def test_pickled_objects_need_explicit_trust(tmp_path):
    _, state = _tiny_state()
    ckpt = {"model": state, "args": argparse.Namespace(arch="data2vec_multi")}  # old fairseq metadata
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        load_sslam(tmp_path / "old.pt")
    assert load_sslam(tmp_path / "old.pt", trust_checkpoint=True).config.depth == 2


def test_missing_and_unknown_keys_are_listed(tmp_path):
    _, state = _tiny_state()
    state.pop("blocks.1.norm2.bias")
    state["blocks.1.adapter.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "bad.safetensors"))
    expected = r"missing keys \['blocks.1.norm2.bias'\].*unexpected keys \['blocks.1.adapter.weight'\]"
    with pytest.raises(ValueError, match=expected):
        load_sslam(tmp_path / "bad.safetensors")


def test_not_an_sslam_checkpoint(tmp_path):
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is this an SSLAM / EAT checkpoint"):
        load_sslam(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_sslam(tmp_path / "nope.pt")
