"""Where the toolkit keeps what it materialises once per machine (the default LLM, Whisper-base), and how.

Several processes may ask for the same folder at once (the ranks of a launch, two runs started together), with an
empty `$PAL_HOME`. `materialise` lets one of them build it under a file lock (the `filelock` library) while the
others wait, then all read the one finished folder. A folder counts as finished only when it holds the marker that
the build wrote last, naming the build's version: a folder half-written by a killed process is never in place
(builds run in a temporary sibling, renamed when done), and one written by something else, or by an older
conversion, is built again.

A build that saves a Hugging Face model runs in a fresh process (`fresh_process=True`): in a rank whose process
group is up, `save_pretrained` writes the weights only on rank 0 and silently nothing elsewhere, so the rank that
took the lock must not be the one that writes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from filelock import FileLock, Timeout

from pal.common.safe_write import atomic_folder, disk_errors

MARKER = ".pal-materialised.json"


def pal_home() -> Path:
    """The cache folder for materialised models: `$PAL_HOME`, else `~/.cache/pal`."""
    return Path(os.environ.get("PAL_HOME", Path.home() / ".cache" / "pal")).expanduser()


def is_materialised(target: Path, version: str) -> bool:
    """True when `target` holds the marker of a finished build of this `version`."""
    try:
        return json.loads((target / MARKER).read_text()).get("version") == version
    except (OSError, ValueError, AttributeError):
        return False


def materialise(target: str | Path, build: Callable[[Path], None], version: str, fresh_process: bool = False) -> Path:
    """`target`, built once by `build(staging_folder)` if it is not a finished build of `version`. → `target`.

    Safe across processes: the first to take `target`'s lock builds, the others wait and then find it finished. The
    folder is readable by other users (the umask's permissions, not a temporary folder's 0700). `fresh_process`:
    `build` (a module-level function, or a partial of one) runs in a new process, its errors raised here."""
    target = Path(target)
    if is_materialised(target, version):
        return target
    with disk_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target.parent / f".{target.name}.lock")
    try:
        lock.acquire(timeout=1)
    except Timeout:
        print(f"waiting for another process to finish {target} ...", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        if not is_materialised(target, version):  # another process may have built it while this one waited
            with atomic_folder(target) as staging:
                if fresh_process:
                    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as child:
                        child.submit(build, staging).result()
                else:
                    build(staging)
                (staging / MARKER).write_text(json.dumps({"version": version}))
    finally:
        lock.release()
    return target
