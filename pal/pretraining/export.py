"""`pal sslam export`: a pre-training run's student encoder as a folder `load_sslam` reads."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from pal.training.checkpointing import newest_intact


def export_student(run: str | Path, out: str | Path) -> Path:
    """`pal sslam export`: the latest (or given) checkpoint's student encoder, without decoder, as safetensors plus a
    config.json that `load_sslam` reads directly."""
    run = Path(run)
    if (run / "student.safetensors").is_file():
        tag_dir = run
    else:
        tag_dir = newest_intact(run)
        if tag_dir is None:
            raise FileNotFoundError(f"{run} is neither a checkpoint folder nor a run folder with an intact checkpoint.")
    state = {k: v for k, v in load_file(tag_dir / "student.safetensors").items() if ".decoder." not in k}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text((tag_dir / "encoder_config.json").read_text())
    return out
