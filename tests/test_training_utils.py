"""Shared training plumbing: the weight-decay policy (with the official SSLAM quirk as a switch), the schedule and
the manifest formats."""

from __future__ import annotations

import math

import pytest

from pal.encoders.sslam.model import PRESETS
from pal.encoders.sslam.pretraining import SSLAMPretrainer
from pal.pretraining.data import read_audio_manifest
from pal.training.engine import cosine_lr, param_groups


def test_weight_decay_policy_faithful_and_intended():
    model = SSLAMPretrainer(PRESETS["tiny"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    faithful = param_groups(model, 0.05, decay_all=True)
    assert len(faithful) == 1 and faithful[0]["weight_decay"] == 0.05 and len(faithful[0]["params"]) == len(trainable)
    intended = param_groups(model, 0.05, decay_all=False)
    decayed, exempt = intended[0]["params"], intended[1]["params"]
    assert intended[1]["weight_decay"] == 0.0 and len(decayed) + len(exempt) == len(trainable)
    assert all(p.numel() > p.shape[-1] for p in decayed) and all(p.numel() == p.shape[-1] for p in exempt)
    cls = model.student.image.extra_tokens  # [1, 1, D]: a single token, exempt like the norms and biases
    assert any(p is cls for p in exempt) and any(p is cls for p in faithful[0]["params"])
    positions = model.student.image.fixed_positional_encoder.positions
    assert not any(p is positions for p in decayed + exempt)  # frozen: never in the optimizer


def test_cosine_schedule():
    assert cosine_lr(0, 1.0, 10, 110) == 0.0
    assert cosine_lr(5, 1.0, 10, 110) == pytest.approx(0.5)
    assert cosine_lr(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert cosine_lr(60, 1.0, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine_lr(110, 1.0, 10, 110, min_lr=0.1) == pytest.approx(0.1)


def test_fairseq_tsv_and_jsonl_manifests(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\na.wav\t32000\nsub/b.wav\t32000\n")
    assert read_audio_manifest(tmp_path / "train.tsv") == [str(tmp_path / "a.wav"), str(tmp_path / "sub" / "b.wav")]
    (tmp_path / "train.jsonl").write_text('{"audio": "a.wav"}\n')
    assert read_audio_manifest(tmp_path / "train.jsonl") == [str((tmp_path / "a.wav").resolve())]
    (tmp_path / "bad.jsonl").write_text('{"audio": "a.wav"}\n{"path": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each line needs an \"audio\" path string"):
        read_audio_manifest(tmp_path / "bad.jsonl")


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "pal" / "configs").rglob("*.yaml")), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_yaml_loads_into_its_typed_config(path):
    from pal.curriculum.config import CurriculumConfig
    from pal.encoders.ensemble import EnsembleConfig
    from pal.pretraining.config import PretrainConfig

    kind = {"curriculum": CurriculumConfig, "compare": CurriculumConfig, "encoders": EnsembleConfig,
            "sslam": PretrainConfig}[path.parent.name]
    config = kind.from_yaml(path)
    if kind is PretrainConfig:
        assert config.model.build().embed_dim > 0 and config.objective.stage in (1, 2)
    if kind is CurriculumConfig:
        assert len(config.stages) == 3 and config.model.ensemble_config().encoders


@pytest.mark.parametrize("variant", sorted(p.name for p in (ROOT / "pal" / "configs" / "compare").glob("*.yaml")))
def test_every_comparison_config_trains_the_same_curriculum(variant):
    """PAL's identical curriculum (docs/design.md#curriculum): the compared models differ in the connector (or the
    encoders), never in data or schedule."""
    from dataclasses import asdict

    from pal.curriculum.config import CurriculumConfig

    reference = asdict(CurriculumConfig.from_yaml(ROOT / "pal" / "configs" / "compare" / "lal.yaml"))
    config = asdict(CurriculumConfig.from_yaml(ROOT / "pal" / "configs" / "compare" / variant))
    for key in ("connector", "encoders"):
        reference["model"].pop(key), config["model"].pop(key)
    reference.pop("out"), config.pop("out")
    assert config == reference


def test_a_yaml_variant_is_its_base_with_what_it_writes(tmp_path):
    from pal.curriculum.config import CurriculumConfig

    (tmp_path / "base.yaml").write_text(
        "model: {llm: ../llm, encoders: enc.yaml, connector: {connector: lal, lal_config: {start_layer: 4}},\n"
        "        dtype: float32}\n"
        "seed: 3\nstages:\n- {name: a, data: [{manifest: a.jsonl}], trainable: [connector], steps: 5}\n"
        "- {name: b, data: [{manifest: b.jsonl}], trainable: [connector], steps: 6}\n")
    (tmp_path / "plits.yaml").write_text("base: base.yaml\nmodel: {connector: {connector: plits}}\nseed: 4\n")
    config = CurriculumConfig.from_yaml(tmp_path / "plits.yaml")
    assert config.model.connector == {"connector": "plits"}  # a free-form mapping is replaced whole
    assert config.model.llm == str(tmp_path.parent / "llm") and config.model.dtype == "float32"  # `model` merged
    assert config.seed == 4 and [s.steps for s in config.stages] == [5, 6]
    assert config.stages[0].data[0].manifest == str(tmp_path / "a.jsonl")
    (tmp_path / "short.yaml").write_text("base: plits.yaml\nstages:\n"
                                         "- {name: c, data: [{manifest: c.jsonl}], trainable: [connector], steps: 2}\n")
    chained = CurriculumConfig.from_yaml(tmp_path / "short.yaml")  # a list is replaced whole; bases chain
    assert [s.name for s in chained.stages] == ["c"]
    assert chained.seed == 4 and chained.model.connector["connector"] == "plits"

    (tmp_path / "typo.yaml").write_text("base: base.yaml\nmodel: {conector: {}}\n")
    with pytest.raises(ValueError, match=r"typo.yaml: model: unknown key\(s\) \['conector'\]"):
        CurriculumConfig.from_yaml(tmp_path / "typo.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match=r"leads back to itself: loop.yaml -> loop2.yaml -> loop.yaml"):
        CurriculumConfig.from_yaml(tmp_path / "loop.yaml")
    (tmp_path / "far.yaml").write_text("base: ../elsewhere/base.yaml\n")
    with pytest.raises(ValueError, match=r"far.yaml: base = '../elsewhere/base.yaml': expected the file name of a "
                                         r"YAML in the same folder"):
        CurriculumConfig.from_yaml(tmp_path / "far.yaml")
    (tmp_path / "lost.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"lost.yaml: base = 'gone.yaml': .*gone.yaml does not exist"):
        CurriculumConfig.from_yaml(tmp_path / "lost.yaml")


def test_a_clip_shorter_than_one_fbank_frame_is_a_reported_skip_not_a_crash(tmp_path):
    """In `sslam pretrain`, `sslam extract` and `pal features` a 10 ms clip raised a bare ValueError; inside a batch
    with longer clips it was encoded as an all-zero spectrogram."""
    import numpy as np
    import soundfile
    import torch

    from pal.encoders.sslam.frontend import FrontendConfig, batch_fbank
    from pal.pretraining.data import ClipDataset

    soundfile.write(tmp_path / "blip.wav", np.zeros(160, dtype=np.float32), 16000)
    _, spec, error = ClipDataset([tmp_path / "blip.wav"], FrontendConfig())[0]
    assert spec is None and "blip.wav: 10.0 ms long, shorter than the 25 ms needed" in error
    with pytest.raises(ValueError, match=r"clips \[1\] are shorter than one 25 ms fbank frame"):
        batch_fbank([torch.zeros(16000), torch.zeros(160)], FrontendConfig())


def test_write_failures_are_said_in_words(tmp_path):
    import errno

    from pal.common.safe_write import OutputError, disk_errors

    with pytest.raises(OutputError, match=r"cannot write .*x.pt: the write stopped part-way, most likely no space"):
        with disk_errors(tmp_path / "x.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1234 vs 1200")
    with pytest.raises(OutputError, match=r"the file system is read-only"):
        with disk_errors(tmp_path / "x.pt"):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(RuntimeError, match="something else"):  # other errors pass through untouched
        with disk_errors(tmp_path / "x.pt"):
            raise RuntimeError("something else")


def test_a_folder_written_atomically_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    import errno

    from pal.common.safe_write import OutputError, atomic_folder

    target = tmp_path / "final"
    with atomic_folder(target) as staging:
        (staging / "weights").write_text("old")
        assert not target.exists()  # nothing under the target name while it is written
    with atomic_folder(target) as staging:
        (staging / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["final"]
    with pytest.raises(OutputError, match=r"final: no space left on device"):
        with atomic_folder(target) as staging:
            (staging / "weights").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["final"]


def test_a_recipe_runs_setup_train_save_in_order_and_cleans_up_after_a_failure_too():
    from pal.curriculum.recipe import CurriculumRecipe
    from pal.pretraining.recipe import SSLAMPretrainRecipe
    from pal.training.lifecycle import Recipe

    class Steps(Recipe):
        def __init__(self, failing: str | None = None):
            self.calls, self.failing = [], failing

        def step(self, name: str):
            self.calls.append(name)
            if name == self.failing:
                raise RuntimeError(f"{name} failed")

        def setup(self):
            self.step("setup")

        def train(self):
            self.step("train")
            return "summary"

        def save(self):
            self.step("save")

        def cleanup(self):
            self.step("cleanup")

    recipe = Steps()
    assert recipe.run() == "summary" and recipe.calls == ["setup", "train", "save", "cleanup"]
    for failing, calls in (("setup", ["setup", "cleanup"]), ("train", ["setup", "train", "cleanup"])):
        recipe = Steps(failing)
        with pytest.raises(RuntimeError, match=f"{failing} failed"):
            recipe.run()
        assert recipe.calls == calls
    assert issubclass(CurriculumRecipe, Recipe) and issubclass(SSLAMPretrainRecipe, Recipe)
    with pytest.raises(TypeError, match="train"):  # a recipe must write its own setup and train
        type("NoTrain", (Recipe,), {"setup": lambda self: None})()
