"""The training path under faults: every ZeRO stage hands off and resumes; checkpoints are small, written in order,
never unpickled, pruned by step and skipped when damaged; a run folder refuses a changed config; everything is
validated before stage 1; bad samples found at run time are skipped with their manifest line; dropout is on from the
first step. Runs are in-process (one DeepSpeed rank in the test process) on the session's tiny curriculum."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import ROOT, caption_row, curriculum_dict, train_in_process, write_jsonl, write_yaml
from safetensors.torch import load_file


def _one_stage(env: Path, name: str, **stage) -> Path:
    config = curriculum_dict(env, stages=1, val_manifest=None, num_samples=0, checkpoint_every=1, keep_last=3,
                             **stage)
    return write_yaml(env / f"{name}.yaml", config)


def _final(out: Path, stage: str = "stage1-connector") -> dict:
    return load_file(out / stage / "final" / "model.safetensors")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------------------------
# 1, 11. Every ZeRO stage finishes, hands off, resumes exactly; checkpoints hold no frozen weight
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zero,precision", [(0, "fp32"), (0, "bf16"), (1, "bf16"), (2, "fp32"), (3, "bf16")])
def test_every_zero_stage_finishes_hands_off_and_resumes(curriculum_env, tmp_path, zero, precision):
    config = curriculum_dict(curriculum_env, stages=2, steps=4, checkpoint_every=1, keep_last=2, val_manifest=None,
                             num_samples=0, precision=precision, zero_stage=None,
                             deepspeed=str(ROOT / "pal" / "configs" / "deepspeed" / f"zero{zero}.json"))
    path = write_yaml(tmp_path / "c.yaml", config)
    train_in_process(path, tmp_path / "straight")
    train_in_process(path, tmp_path / "resumed", stage=1, max_steps=2)
    train_in_process(path, tmp_path / "resumed", resume=True)
    for stage in ("stage1-connector", "stage2-lora"):
        _assert_same(_final(tmp_path / "straight", stage), _final(tmp_path / "resumed", stage))
    # What a checkpoint holds: trainable tensors (fp32 masters) and DeepSpeed's state of the trainables only.
    tag = tmp_path / "straight" / "stage1-connector" / "checkpoints" / "step-00000004"
    trainable = load_file(tag / "trainable.safetensors")
    assert trainable and all(k.startswith(("plits.", "lal.")) for k in trainable)
    assert all(v.dtype == torch.float32 for v in trainable.values())
    llm_bytes = sum(p.stat().st_size for p in (curriculum_env / "llm").glob("*.safetensors"))
    checkpoint_bytes = sum(p.stat().st_size for p in tag.rglob("*") if p.is_file())
    assert checkpoint_bytes < llm_bytes / 2, (checkpoint_bytes, llm_bytes)


# ----------------------------------------------------------------------------------------------------------------------
# 9, 10. Damaged or planted checkpoints: fall back to the newest intact one, never run code
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_run(curriculum_env, tmp_path_factory):
    """A 6-step stage stopped after 3 steps (checkpoints at 1, 2, 3), and the same stage run straight through."""
    root = tmp_path_factory.mktemp("stopped")
    config = _one_stage(curriculum_env, "six", steps=6)
    train_in_process(config, root / "straight")
    train_in_process(config, root / "stopped", max_steps=3)
    return config, root


def _copy(stopped_run, tmp_path) -> Path:
    _, root = stopped_run
    shutil.copytree(root / "stopped", tmp_path / "run")
    return tmp_path / "run" / "stage1-connector" / "checkpoints"


def test_truncated_checkpoint_falls_back_to_the_newest_intact_one(stopped_run, tmp_path, capsys):
    config, root = stopped_run
    checkpoints = _copy(stopped_run, tmp_path)
    optim = next((checkpoints / "step-00000003").glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[: optim.stat().st_size // 2])
    train_in_process(config, tmp_path / "run", resume=True)
    said = capsys.readouterr().out
    assert "step-00000003" in said and "bytes" in said and "Resuming from step-00000002" in said
    _assert_same(_final(root / "straight"), _final(tmp_path / "run"))


def test_trained_steps_counts_only_intact_checkpoints(stopped_run, tmp_path):
    from pal.training.checkpointing import trained_steps

    checkpoints = _copy(stopped_run, tmp_path)
    run = checkpoints.parent
    assert trained_steps(run) == 3
    optim = next((checkpoints / "step-00000003").glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[: optim.stat().st_size // 2])
    assert trained_steps(run) == 2  # what `pal demo` resumes from, not the damaged step 3
    assert trained_steps(tmp_path / "never-trained") == 0


def test_empty_latest_falls_back_to_the_newest_intact_one(stopped_run, tmp_path, capsys):
    config, root = stopped_run
    checkpoints = _copy(stopped_run, tmp_path)
    (checkpoints / "latest").write_text("")
    train_in_process(config, tmp_path / "run", resume=True)
    assert "`latest` is empty" in capsys.readouterr().out
    _assert_same(_final(root / "straight"), _final(tmp_path / "run"))


class _Planted:
    """Unpickling this object writes a file: what a hostile `.pt` would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_a_planted_pickle_is_never_executed(stopped_run, tmp_path, capsys):
    config, root = stopped_run
    checkpoints = _copy(stopped_run, tmp_path)
    marker = tmp_path / "pwned"
    tag = checkpoints / "step-00000003"
    states = next(tag.glob("*model_states.pt"))
    with open(states, "wb") as f:
        pickle.dump({"module": _Planted(str(marker))}, f)
    complete = json.loads((tag / "complete.json").read_text())  # the attacker also fixes the recorded size
    complete["files"][states.name] = states.stat().st_size
    (tag / "complete.json").write_text(json.dumps(complete))
    train_in_process(config, tmp_path / "run", resume=True)
    assert not marker.exists()
    assert "cannot be loaded safely" in capsys.readouterr().out
    _assert_same(_final(root / "straight"), _final(tmp_path / "run"))


def test_no_intact_checkpoint_is_an_error_not_a_restart(stopped_run, tmp_path):
    from pal.training.checkpointing import CheckpointError

    config, _ = stopped_run
    checkpoints = _copy(stopped_run, tmp_path)
    for tag in checkpoints.glob("step-*"):
        (tag / "complete.json").unlink()
    with pytest.raises(CheckpointError, match="no intact checkpoint.*--restart"):
        train_in_process(config, tmp_path / "run", resume=True)


def test_a_save_killed_before_its_last_file_leaves_latest_on_the_previous_checkpoint(curriculum_env, tmp_path,
                                                                                     monkeypatch):
    """`trainable.safetensors` used to be written after `latest` moved: a kill there left `latest` on a checkpoint
    without it."""
    import pal.curriculum.recipe as recipe

    config = _one_stage(curriculum_env, "kill", steps=4)
    real = recipe.save_file
    calls = []

    def dies_on_the_third(tensors, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed while saving")
        real(tensors, path)

    monkeypatch.setattr(recipe, "save_file", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        train_in_process(config, tmp_path / "run")
    checkpoints = tmp_path / "run" / "stage1-connector" / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step-00000002"
    monkeypatch.setattr(recipe, "save_file", real)
    train_in_process(config, tmp_path / "run", resume=True)
    train_in_process(config, tmp_path / "straight")
    _assert_same(_final(tmp_path / "straight"), _final(tmp_path / "run"))


# ----------------------------------------------------------------------------------------------------------------------
# 8. Pruning by step; 7. a run folder remembers its config
# ----------------------------------------------------------------------------------------------------------------------


def test_pruning_is_by_step_and_drops_an_abandoned_future(tmp_path):
    from pal.training.checkpointing import prune_checkpoints

    root = tmp_path / "checkpoints"
    for step in (9, 10, 24, 99_999_999, 100_000_000):
        (root / f"step-{step:08d}").mkdir(parents=True)
    prune_checkpoints(tmp_path, 100_000_000, keep_last=2)  # names sort 100000000 before 99999999
    assert sorted(p.name for p in root.iterdir()) == ["step-100000000", "step-99999999"]
    prune_checkpoints(tmp_path, 10, keep_last=2)  # a new run at step 10: later steps belong to an abandoned run
    assert sorted(p.name for p in root.iterdir()) == []
    (root / "step-00000010").mkdir()
    (root / "step-00000009").mkdir()
    prune_checkpoints(tmp_path, 10, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000009", "step-00000010"]


def test_a_finished_run_refuses_a_changed_config_unless_restarted(stopped_run, curriculum_env, tmp_path):
    _, root = stopped_run
    shutil.copytree(root / "straight", tmp_path / "run")
    same = _one_stage(curriculum_env, "six", steps=6)
    assert train_in_process(same, tmp_path / "run")[0]["skipped"].startswith("already finished")
    recorded = (tmp_path / "run" / "curriculum.json").read_text()
    changed = _one_stage(curriculum_env, "six-lr", steps=6, optim={"lr": 1e-3, "warmup_steps": 1})
    with pytest.raises(ValueError, match="trained with a different config.*--restart"):
        train_in_process(changed, tmp_path / "run")
    assert (tmp_path / "run" / "curriculum.json").read_text() == recorded  # not overwritten by the refused config
    result = train_in_process(changed, tmp_path / "run", restart=True)[0]
    assert result["steps"] == 6 and "skipped" not in result


def test_an_unfinished_run_resumes_only_in_as_many_ranks_as_it_started(stopped_run, tmp_path):
    config, _ = stopped_run
    _copy(stopped_run, tmp_path)
    record_path = tmp_path / "run" / "stage1-connector" / "stage.json"
    record = json.loads(record_path.read_text())
    assert record["world_size"] == 1  # what the in-process run recorded
    record_path.write_text(json.dumps({**record, "world_size": 2}))  # as if started under `pal train --nproc 2`
    with pytest.raises(ValueError, match=r"started in 2 rank\(s\) and this run has 1: resume it with `--nproc 2`"):
        train_in_process(config, tmp_path / "run", resume=True)
    assert json.loads(record_path.read_text())["world_size"] == 2  # the refused run wrote nothing


def test_an_unfinished_run_without_resume_is_refused(stopped_run, tmp_path):
    config, _ = stopped_run
    _copy(stopped_run, tmp_path)
    with pytest.raises(ValueError, match="unfinished run: pass --resume.*or --restart"):
        train_in_process(config, tmp_path / "run")


# ----------------------------------------------------------------------------------------------------------------------
# 3. Validation of every stage before stage 1; 2. run-time skips with their line; 16. train mode
# ----------------------------------------------------------------------------------------------------------------------


def test_a_bad_later_stage_is_reported_before_stage_one_trains(curriculum_env, tmp_path):
    config = curriculum_dict(curriculum_env, val_manifest=None, num_samples=0)
    write_jsonl(tmp_path / "bad.jsonl", [caption_row(0, str(curriculum_env / "tone0.wav"), "low"), "{oops"])
    config["stages"][2]["data"] = [{"manifest": str(tmp_path / "bad.jsonl")}]
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2, "no_such_setting": 1}}')
    config["stages"][1]["deepspeed"], config["stages"][1]["zero_stage"] = str(tmp_path / "ds.json"), None
    path = write_yaml(tmp_path / "c.yaml", config)
    with pytest.raises(ValueError) as err:
        train_in_process(path, tmp_path / "run")
    text = str(err.value)
    assert "nothing was trained" in text
    assert "stages[2] (everything).data" in text and "bad.jsonl:2: not valid JSON" in text
    assert "stages[1] (lora).deepspeed" in text and "no_such_setting" in text
    assert not (tmp_path / "run" / "stage1-connector").exists()


def test_samples_that_fail_at_run_time_are_skipped_with_their_line_and_the_stage_finishes(curriculum_env, tmp_path):
    """A file whose header is fine but whose samples are NaN passes validation and fails when decoded: it is skipped,
    counted and listed with manifest, line and id; the stage finishes (and a resume would not hit it again). A clip
    too short for the encoders is found before training and set aside the same way (bad_audio: skip, the default),
    where it once refused the whole run."""
    rate = 16000
    soundfile.write(tmp_path / "nan.wav", np.full(rate // 2, np.nan, dtype=np.float32), rate, subtype="FLOAT")
    soundfile.write(tmp_path / "blip.wav", np.zeros(rate // 100, dtype=np.float32), rate)  # 10 ms: under one frame
    rows = [caption_row(i, str(curriculum_env / f"tone{i}.wav"), "low") for i in range(3)]
    rows.append(caption_row(9, str(tmp_path / "nan.wav"), "broken"))
    rows.append(caption_row(8, str(tmp_path / "blip.wav"), "short"))
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    config = curriculum_dict(curriculum_env, stages=1, steps=3, val_manifest=None, num_samples=0,
                             group_by_length=False)
    config["stages"][0]["data"] = [{"manifest": str(manifest)}]
    config["model"]["max_bad_audio"] = 0.25  # 1 row of 5
    result = train_in_process(write_yaml(tmp_path / "c.yaml", config), tmp_path / "run")[0]
    set_aside = [json.loads(line) for line in
                 (tmp_path / "run" / "stage1-connector" / "bad_samples.manifest.jsonl").read_text().splitlines()]
    assert [(r["manifest"], r["line"]) for r in set_aside] == [(str(manifest), 5)] and result["set_aside"] == 1
    assert "10.0 ms long, shorter than the 25 ms" in set_aside[0]["problem"]
    bad = [json.loads(line) for line in
           (tmp_path / "run" / "stage1-connector" / "bad_samples.rank0.jsonl").read_text().splitlines()]
    assert bad and result["bad_samples"] == len(bad)
    assert {(b["manifest"], b["line"], b["id"]) for b in bad} == {(str(manifest), 4, "t9")}
    assert all("NaN" in b["problem"] for b in bad)
    assert (tmp_path / "run" / "stage1-connector" / "final" / "config.json").is_file()


def test_stages_train_in_train_mode_from_the_first_step(curriculum_env, tmp_path, monkeypatch):
    """`from_pretrained` returns eval mode; stages 2-3 used to train without dropout until the first evaluation."""
    from pal.curriculum.recipe import CurriculumRecipe

    config = write_yaml(tmp_path / "c.yaml", curriculum_dict(curriculum_env, stages=2, steps=2, val_manifest=None,
                                                             num_samples=0))
    modes = []
    real = CurriculumRecipe.micro_step

    def record(self, engine, batch):
        modes.append(engine.module.training and engine.module.llm.training)
        return real(self, engine, batch)

    monkeypatch.setattr(CurriculumRecipe, "micro_step", record)
    train_in_process(config, tmp_path / "run")
    assert modes == [True] * 4


def test_an_unwritable_output_is_refused_before_training(curriculum_env, tmp_path):
    from pal.common.safe_write import OutputError

    (tmp_path / "a-file").write_text("")
    config = write_yaml(tmp_path / "c.yaml", curriculum_dict(curriculum_env, stages=1, val_manifest=None))
    with pytest.raises(OutputError, match="cannot write .*a-file"):
        train_in_process(config, tmp_path / "a-file" / "run")
