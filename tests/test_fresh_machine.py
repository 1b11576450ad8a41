"""What a new user meets on a fresh machine: a relative output folder, several ranks, an empty `$PAL_HOME`.

`make demo` once failed there while every test passed in warm homes with absolute paths: the ranks read the run's
config back from a file and resolved its relative paths against that file's folder, and both ranks converted the
default LLM into the same folder at once. These tests reproduce both, cheaply; `test_newcomer.py` runs the README's
main command the way a new user does.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import socket
import stat
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_ranks_read_the_files_the_user_named_with_relative_paths(tmp_path, monkeypatch):
    """`pal demo`'s default --out is relative (runs/demo): the config the ranks read back from a file must name the
    same files as the one in memory, and each rank must judge every stage's state as the launcher did."""
    import pal.training.launch
    from pal.curriculum import command
    from pal.curriculum.config import CurriculumConfig
    from pal.curriculum.recipe import CurriculumRecipe
    from pal.workflows.demo import ensemble_config

    monkeypatch.chdir(tmp_path)
    config = CurriculumConfig.from_yaml(ROOT / "pal" / "configs" / "curriculum" / "demo-smoke.yaml")
    for stage in config.stages:
        for source in stage.data:
            source.manifest = f"runs/demo/data/{Path(source.manifest).name}"
        stage.val_manifest = "runs/demo/data/val.jsonl"
    config.model.encoders = ensemble_config(Path("runs/demo/sslam/encoder"))
    config.feature_cache, config.out = "runs/demo/features", "runs/demo/curriculum"
    ranks = []

    def rank_reads(module, args, nproc):  # what each rank does first: read the config file it is given
        ranks.append(CurriculumConfig.from_yaml(args[args.index("--config") + 1]))
        return 0

    monkeypatch.setattr(pal.training.launch, "launch", rank_reads)
    command.train_in_ranks(config, 2, "demo-smoke.yaml", Path("runs/demo/curriculum.json"))
    [rank] = ranks
    here = tmp_path.resolve() / "runs" / "demo"
    assert rank.stages[0].data[0].manifest == str(here / "data" / "classify_caption.jsonl")
    assert rank.stages[2].val_manifest == str(here / "data" / "val.jsonl")
    assert rank.model.encoders.encoders["sslam"].path == str(here / "sslam" / "encoder")
    assert rank.feature_cache == str(here / "features")
    assert Path(rank.out).resolve() == here / "curriculum"
    assert rank.model.llm == "default"  # a kept value is not a path
    per_rank = copy.deepcopy(config)  # what the launcher judged: each rank's half of the batch, paths as given
    for stage in per_rank.stages:
        stage.batch_size //= 2
    assert [CurriculumRecipe(rank).folder.stage_hash(k) for k in range(3)] == \
        [CurriculumRecipe(per_rank).folder.stage_hash(k) for k in range(3)]


def test_a_run_killed_in_two_ranks_is_judged_for_two_ranks_before_they_start(tmp_path, monkeypatch):
    """`pal demo` and `pal compare` rerun after a kill: the launcher reads each stage's state before it starts the
    ranks, for the number of ranks it will start (it used to read a rank count that only exists inside a rank, and
    failed with an AttributeError on any unfinished stage)."""
    import pal.training.launch
    from pal.curriculum import command
    from pal.curriculum.config import CurriculumConfig
    from pal.curriculum.recipe import CurriculumRecipe

    config = CurriculumConfig.from_yaml(ROOT / "pal" / "configs" / "curriculum" / "demo-smoke.yaml")
    config.out = str(tmp_path / "run")
    per_rank = copy.deepcopy(config)
    for stage in per_rank.stages:
        stage.batch_size //= 2
    folder = CurriculumRecipe(per_rank).folder

    def killed_after_step_2(ranks: int) -> None:
        (folder.stage_dir(0) / "checkpoints").mkdir(parents=True, exist_ok=True)
        (folder.stage_dir(0) / "checkpoints" / "latest").write_text("step-00000002")
        (folder.stage_dir(0) / "stage.json").write_text(json.dumps(
            {"hash": folder.stage_hash(0), "run": "r1", "previous_run": None, "world_size": ranks}))

    launched = []
    monkeypatch.setattr(pal.training.launch, "launch", lambda module, args, nproc: launched.append(nproc) or 0)
    killed_after_step_2(2)
    command.train_in_ranks(config, 2, "demo-smoke.yaml", tmp_path / "resolved.json")
    assert launched == [2]
    killed_after_step_2(4)
    with pytest.raises(ValueError, match=r"started in 4 rank\(s\) and this run has 2"):
        command.train_in_ranks(config, 2, "demo-smoke.yaml", tmp_path / "resolved.json")
    assert launched == [2]


# ---------------------------------------------------------------------------------------- first-use materialisation
def _materialise_slowly(home: str, log: str, start, seen: multiprocessing.Queue) -> None:
    """One of several processes starting together: each asks for the same folder under a fresh `$PAL_HOME`."""
    os.environ["PAL_HOME"] = home
    from pal.common.home import materialise

    def build(folder: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        for i in range(5):  # slow enough that every process asks before the first one is done
            (folder / f"part{i}.txt").write_text(f"part {i}\n")
            time.sleep(0.2)

    start.wait()
    folder = materialise(Path(home) / "thing", build, version="1")
    seen.put((os.getpid(), sorted(p.name for p in folder.iterdir()), os.stat(folder / "part0.txt").st_ino))


def test_a_folder_is_materialised_once_while_other_processes_wait_for_it(tmp_path):
    home, log = tmp_path / "home", tmp_path / "builds.log"
    context = multiprocessing.get_context("spawn")
    seen, start = context.Queue(), context.Barrier(3)
    processes = [context.Process(target=_materialise_slowly, args=(str(home), str(log), start, seen))
                 for _ in range(3)]
    for p in processes:
        p.start()
    results = [seen.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1  # one process built it; the others waited and read the same folder
    files = [f"part{i}.txt" for i in range(5)]
    assert all([n for n in names if n.startswith("part")] == files for _, names, _ in results)
    assert len({inode for _, _, inode in results}) == 1  # nobody replaced it under another's feet
    assert [p.name for p in home.iterdir() if p.name.startswith(".thing-")] == []  # no staging left behind


def test_a_materialised_folder_is_readable_by_others(tmp_path, monkeypatch):
    from pal.common.home import materialise

    old = os.umask(0o022)
    try:
        folder = materialise(tmp_path / "thing", lambda f: (f / "a.txt").write_text("a"), version="1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # not mkdtemp's 0700: another user can read the model
    assert stat.S_IMODE((folder / "a.txt").stat().st_mode) == 0o644


def test_a_half_written_or_foreign_folder_is_never_read(tmp_path):
    from pal.common.home import materialise

    builds = []

    def build(folder: Path) -> None:
        builds.append(folder)
        (folder / "config.json").write_text('{"model_type": "llama"}')

    foreign = tmp_path / "thing"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")  # looks complete, but no conversion of ours wrote it
    folder = materialise(foreign, build, version="1")
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "llama"} and len(builds) == 1
    assert materialise(foreign, build, version="1") == folder and len(builds) == 1  # complete: read as it is
    materialise(foreign, build, version="2")  # another conversion recipe: built again
    assert len(builds) == 2

    def interrupted(folder: Path) -> None:
        (folder / "config.json").write_text("{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialise(tmp_path / "other", interrupted, version="1")
    assert not (tmp_path / "other").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".other-")] == []


def _default_llm_in_a_rank(home: str, rank: int, port: int, seen: multiprocessing.Queue) -> None:
    """One rank of a launch with an empty `$PAL_HOME`: its process group up, it asks for the default LLM."""
    os.environ["PAL_HOME"] = home
    import torch.distributed as dist
    from transformers import AutoConfig, AutoTokenizer

    from pal.llm import default_llm_path

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    if rank == 0:
        time.sleep(3)  # rank 1 converts (Hugging Face's save_pretrained writes no weights on a rank other than 0)
    try:
        folder = default_llm_path()
        config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        seen.put((rank, config.model_type, tokenizer("Paris").input_ids, os.stat(folder / "config.json").st_ino))
    except Exception as err:  # said to the test at once, not left to a time-out
        seen.put((rank, f"{type(err).__name__}: {err}", None, None))
    dist.destroy_process_group()


def test_two_ranks_starting_together_share_one_conversion_of_the_default_llm(tmp_path):
    """The race of the issue: the two ranks of a launch, with an empty `$PAL_HOME`, ask for SmolLM2 at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    seen = context.Queue()
    processes = [context.Process(target=_default_llm_in_a_rank, args=(str(tmp_path), rank, port, seen))
                 for rank in (0, 1)]
    for p in processes:
        p.start()
    results = sorted(seen.get(timeout=300) for _ in processes)
    for p in processes:
        p.join(timeout=60)
    assert [r[1] for r in results] == ["llama", "llama"] and results[0][2] == results[1][2]
    final = os.stat(tmp_path / "llm" / "SmolLM2-135M-Instruct" / "config.json").st_ino
    assert [r[3] for r in results] == [final, final]  # the folder either read was never replaced afterwards
