"""`pal configs list` (the configs shipped with pal, by name) and `pal configs cp NAME DEST` (a copy to edit).

A shipped config is named `pal:NAME` wherever a config path goes (`pal train --config pal:curriculum/demo-full.yaml`);
its relative paths name your files from the working directory, a copy's from its own folder."""

import shutil
from pathlib import Path

from pal.common.typed_config import PACKAGED, config_path, packaged_configs


def register(commands) -> None:
    configs = commands.add_parser("configs", help="the configs shipped with pal: list them, copy one to edit")
    which = configs.add_subparsers(dest="configs", required=True)
    which.add_parser("list", help="every shipped config, as pal:NAME").set_defaults(run=run_list)
    copy = which.add_parser("cp", help="copy a shipped config to edit it")
    copy.add_argument("name", help="e.g. curriculum/qwen2.5-1.5b-pal.yaml (or pal:curriculum/...)")
    copy.add_argument("dest", help="a file, or a folder to copy it into")
    copy.set_defaults(run=run_copy)


def run_list(args) -> int:
    root = packaged_configs()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".json")):
        print(f"{PACKAGED}{path.relative_to(root).as_posix()}")
    return 0


def run_copy(args) -> int:
    """Copies the config and the configs it builds on (`base:`, a file beside it), which the copy needs beside it."""
    source = config_path(args.name if args.name.startswith(PACKAGED) else PACKAGED + args.name)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise ValueError(f"{dest} exists; give another destination (nothing was copied).")
    copies = [(source, dest)]
    while base := _base_of(copies[-1][0]):
        copies.append((source.parent / base, dest.parent / base))
    for origin, target in copies:
        if target == dest or not target.exists():  # a base already there is the user's: kept
            shutil.copyfile(origin, target)
            print(f"copied {PACKAGED}{origin.relative_to(packaged_configs()).as_posix()} to {target}")
    return 0


def _base_of(path: Path) -> str | None:
    import yaml

    data = yaml.safe_load(path.read_text()) if path.suffix == ".yaml" else None
    return data.get("base") if isinstance(data, dict) else None
