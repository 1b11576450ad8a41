"""`pal export`: a trained model leaves its run folder and answers elsewhere as it did there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import build_inputs, random_audio, random_texts
from safetensors.torch import save_file

from pal import PALForConditionalGeneration, PALProcessor
from pal.cli.main import main
from pal.encoders.identity import read_ensemble_record, write_ensemble_record
from pal.inference.audio_llm import AudioLLM

QUESTIONS = [("tone0.wav", "Describe the sound."), ("tone2.wav", "Describe the sound."),
             ("tone3.wav", "What can you hear?")]


@pytest.fixture(scope="module")
def run_with_encoder_file(trained_tiny, tmp_path_factory):
    """trained_tiny's run folder, its SSLAM named by a weights file (the tiny preset's own weights) instead of the
    preset, so that an export has encoder weights to carry."""
    from pal.encoders.sslam.model import PRESETS, SSLAMEncoder

    root = tmp_path_factory.mktemp("export")
    run = root / "run"
    shutil.copytree(trained_tiny.parent.parent, run)
    encoder = root / "sslam-tiny.safetensors"
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the preset's fixed network (pal/encoders/ensemble.py)
        save_file(SSLAMEncoder(PRESETS["tiny"]).state_dict(), encoder)
    final = run / "stage1-connector" / "final"
    config, _ = read_ensemble_record(final)
    sslam = replace(config.encoders["sslam"], path=str(encoder), preset=None)
    write_ensemble_record(final, replace(config, encoders={"sslam": sslam}))
    return run, encoder


def _copy_run(run_and_encoder, tmp_path):
    run, encoder = run_and_encoder
    shutil.copytree(run, tmp_path / "run")
    shutil.copyfile(encoder, tmp_path / encoder.name)
    final = tmp_path / "run" / "stage1-connector" / "final"
    config, _ = read_ensemble_record(final)
    sslam = replace(config.encoders["sslam"], path=str(tmp_path / encoder.name))
    write_ensemble_record(final, replace(config, encoders={"sslam": sslam}))
    return tmp_path / "run", tmp_path / encoder.name


def test_an_export_moved_elsewhere_answers_as_the_run_did_once_the_run_is_gone(run_with_encoder_file, curriculum_env,
                                                                               tmp_path):
    run, encoder = _copy_run(run_with_encoder_file, tmp_path)
    llm = AudioLLM.from_pretrained(run / "stage1-connector" / "final")
    before = [llm.ask(curriculum_env / clip, question) for clip, question in QUESTIONS]
    assert main(["export", str(run), str(tmp_path / "export")]) == 0
    shutil.move(tmp_path / "export", tmp_path / "elsewhere")
    shutil.rmtree(run)
    encoder.unlink()
    exported = tmp_path / "elsewhere"
    assert (exported / "encoders" / "sslam" / encoder.name).is_file() and (exported / "README.md").is_file()
    script = (
        "import json, sys\n"
        "from pal.inference.audio_llm import AudioLLM\n"
        "llm = AudioLLM.from_pretrained(sys.argv[1])\n"
        "print(json.dumps([llm.ask(clip, question) for clip, question in json.loads(sys.argv[2])]))\n"
    )
    questions = [(str(curriculum_env / clip), question) for clip, question in QUESTIONS]
    done = subprocess.run([sys.executable, "-c", script, str(exported), json.dumps(questions)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == before


def test_the_auto_classes_the_processor_and_pal_infer_load_an_export(trained_tiny, curriculum_env, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    from pal import PALConfig

    assert main(["export", str(trained_tiny), str(tmp_path / "export")]) == 0
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "export"), PALConfig)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "export")) is PALForConditionalGeneration
    processor, llm = PALProcessor.from_pretrained(tmp_path / "export"), AudioLLM.from_pretrained(trained_tiny)
    clip = curriculum_env / "tone2.wav"
    features = processor.encode_audio([processor.load_audio(clip)])
    expected = llm.features([llm.load(clip)])
    assert all(torch.equal(features[name][0], expected[name][0]) for name in expected)  # the same encoders
    prompt = ["<audio>\nDescribe the sound."]
    assert torch.equal(processor(prompt, features)["input_ids"], llm.processor(prompt, expected)["input_ids"])
    capsys.readouterr()
    assert main(["infer", "--model", str(tmp_path / "export"), "--audio", str(curriculum_env / "tone2.wav"),
                 "--prompt", "Describe the sound.", "--max-new-tokens", "12"]) == 0
    assert "pitched tone" in capsys.readouterr().out  # the trained captions' form, as from the run's own folder


def test_merging_lora_keeps_the_logits_within_float32_rounding(trained_tiny, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained_tiny, model_dir)
    model = PALForConditionalGeneration.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained_tiny's adapters never trained (B = 0): give them weights a merge must carry
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(model_dir)
    assert main(["export", str(model_dir), str(tmp_path / "inline")]) == 0
    assert main(["export", str(model_dir), str(tmp_path / "merged"), "--merge-lora"]) == 0
    inline = PALForConditionalGeneration.from_pretrained(tmp_path / "inline").eval()
    merged = PALForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.lora is None and not [k for k in merged.state_dict() if "lora_" in k]
    texts, audio = random_texts([7, 9]), random_audio(inline.config, [4, 6])
    batch = build_inputs(inline, texts, audio)
    with torch.no_grad():
        expected = inline(**batch, audio=audio).logits
        got = merged(**batch, audio=audio).logits
        for name, param in inline.named_parameters():
            if "lora_B" in name:
                param.zero_()
        without_lora = inline(**batch, audio=audio).logits
    # x·(W + s·B·A)ᵀ and x·Wᵀ + s·(x·Aᵀ)·Bᵀ are the same sums in another order: in float32 each output differs by a
    # few units of rounding (2^-24) of its largest terms per layer, amplified by the few layers after it; 1e-4 of the
    # logits' scale bounds that with a margin, and the adapters' own effect is far larger (asserted).
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale
    assert (without_lora - expected).abs().max() > 100 * 1e-4 * scale


def test_export_refuses_what_it_cannot_take_away(run_with_encoder_file, tmp_path, capsys):
    run, encoder = _copy_run(run_with_encoder_file, tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "neither a model folder (no config.json) nor a training run" in capsys.readouterr().err
    encoder.unlink()
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    assert f"encoder 'sslam' from {encoder}, which is missing" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    assert main(["export", str(run / "stage1-connector" / "final"), str(tmp_path / "out")]) == 2
    assert "exists: export into a new folder" in capsys.readouterr().err
    shutil.rmtree(run / "stage1-connector" / "final")
    assert main(["export", str(run), str(tmp_path / "out2")]) == 2
    assert "has not finished training: stage 1 of 1 has no final/" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2-*"))


def test_an_adapter_only_export_carries_no_llm_weights_and_answers_as_the_whole_model(trained_tiny, curriculum_env,
                                                                                      tmp_path):
    from safetensors.torch import load_file

    from pal import PALConfig
    from pal.llm import load_llm

    # trained_tiny trained its LLM too (no adapter can carry that: refused below); this model's LLM is the untouched
    # base, with trained_tiny's connectors and adapters that carry weights.
    model = PALForConditionalGeneration(PALConfig.from_pretrained(trained_tiny), llm=load_llm(curriculum_env / "llm"))
    trained = PALForConditionalGeneration.from_pretrained(trained_tiny).state_dict()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
            elif not name.startswith("llm."):
                param.copy_(trained[name])
        for name, buffer in model.named_buffers():
            if not name.startswith("llm.") and name in trained:  # the feature norms' statistics
                buffer.copy_(trained[name])
    model_dir = tmp_path / "model"
    shutil.copytree(trained_tiny, model_dir)
    model.save_pretrained(model_dir)
    assert main(["export", str(model_dir), str(tmp_path / "whole")]) == 0
    assert main(["export", str(model_dir), str(tmp_path / "adapter"), "--adapter-only",
                 "--base-llm", str(curriculum_env / "llm")]) == 0
    adapter = tmp_path / "adapter"
    assert not (adapter / "model.safetensors").exists()
    keys = load_file(adapter / "adapter.safetensors")
    assert not [k for k in keys if k.startswith("llm.") and "lora_" not in k] and [k for k in keys if "lora_B" in k]
    whole, from_adapter = AudioLLM.from_pretrained(tmp_path / "whole"), AudioLLM.from_pretrained(adapter)
    for clip, question in QUESTIONS:
        assert from_adapter.ask(curriculum_env / clip, question) == whole.ask(curriculum_env / clip, question)

    record = json.loads((adapter / "base_llm.json").read_text())
    (adapter / "base_llm.json").write_text(json.dumps({**record, "identity": "0" * 16}))
    with pytest.raises(ValueError, match="that LLM's weights have changed since"):
        AudioLLM.from_pretrained(adapter)
    assert main(["export", str(trained_tiny), str(tmp_path / "refused"), "--adapter-only",
                 "--base-llm", str(curriculum_env / "llm")]) == 2
    assert not (tmp_path / "refused").exists()
