"""SSLAM pre-training throughput (`pal bench sslam`): clips per second of one training step on this machine.

A step is the stage-2 objective (clean + mixed views, C clones each, teacher passes, decoder, all losses), backward
and an AdamW update, on random 10 s spectrograms with the ViT-B configuration (or a smaller preset). Reported beside
the official setup: 4 GPUs × 12 clips per update, 400k stage-1 + 200k stage-2 updates (docs/design.md#optimisation).
"""

from __future__ import annotations

import json
import random
import sys
import time

import torch

from pal.encoders.sslam.model import PRESETS
from pal.encoders.sslam.pretraining import EMATeacher, ObjectiveConfig, SSLAMPretrainer

OFFICIAL_CLIPS_PER_UPDATE = 48  # 4 GPUs × 12 clips
OFFICIAL_UPDATES = {"stage1": 400_000, "stage2": 200_000}


def run(preset: str = "vitb", batch: int = 2, clones: int = 8, steps: int = 2, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    objective = ObjectiveConfig(stage=2, clones=clones)
    model = SSLAMPretrainer(PRESETS[preset], objective).to(device)
    teacher = EMATeacher(model.student, objective).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.05)
    spec = torch.randn(batch, 1024, 128, device=device)
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        out = model(spec, model.draw(batch, 1024, rng, gen), teacher)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        teacher.update(model.student, step)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = min(times[1:])
    clips_per_s = batch / step_s
    official_clips = OFFICIAL_CLIPS_PER_UPDATE * OFFICIAL_UPDATES["stage2"]
    return {
        "preset": preset, "device": device, "batch": batch, "clones_per_view": clones, "threads": torch.get_num_threads(),
        "step_s": step_s, "clips_per_s": clips_per_s,
        "official": {"clips_per_update": OFFICIAL_CLIPS_PER_UPDATE, **OFFICIAL_UPDATES},
        "days_for_official_stage2_here": official_clips / clips_per_s / 86400,
    }


def main(args) -> int:
    report = run(args.preset, args.batch, args.clones, args.steps, args.device)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"SSLAM stage-2 step, {report['preset']}, batch {report['batch']} clips × 2 views × {report['clones_per_view']}"
          f" clones, {report['device']} ({report['threads']} threads): {report['step_s']:.2f} s/step, "
          f"{report['clips_per_s']:.2f} clips/s")
    print(f"official: 4 GPUs × 12 clips, 400k (stage 1) + 200k (stage 2) updates; stage 2 alone at this rate would "
          f"take {report['days_for_official_stage2_here']:.0f} days here")
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="vitb")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--clones", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
