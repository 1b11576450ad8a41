"""Writing outputs so that a bad folder is an error in words, and nothing already written is lost.

- `check_writable(folder)`: before hours of work, make sure the output folder can be created and written.
- `disk_errors(path)`: turns the raw errors of a failed write (permission denied, read-only file system, no space left,
  and torch's `RuntimeError: ... unexpected pos` when a zip stream hits a full disk) into an `OutputError` that names
  the path, the device's free space and what to do.
- `atomic_write_text` / `atomic_write_json`: a temporary sibling, then `os.replace`, so a reader never sees half a file.
- `atomic_folder(target)`: the same for a folder (a converted model, a stage's `final/`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

# errno → what it means for the user, in words.
_WHY = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "the path is a folder",
    errno.EEXIST: "a file stands where a folder should be",
}
# What torch's zip writer says when the disk fills up under it (it does not keep the errno).
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


class OutputError(OSError):
    """An output could not be written; the message names the path, the reason and what to do."""


def _free_space(path: Path) -> str:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return f"{shutil.disk_usage(candidate).free / 2**20:.0f} MiB free on the device holding {candidate}"
    return "free space unknown"


def _explain(path: Path, reason: str) -> OutputError:
    if reason in ("no space left on device", "disk quota exceeded"):
        advice = f"{_free_space(path)}; free some space or choose another output folder"
    else:
        advice = "choose a folder you can write to (e.g. another --out)"
    return OutputError(f"cannot write {path}: {reason} ({advice}). Files written before are kept.")


@contextlib.contextmanager
def disk_errors(path: str | Path):
    """Re-raise a failed write under `path` as an OutputError that says what happened in words."""
    path = Path(path)
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        raise _explain(path, _WHY.get(err.errno, err.strerror or str(err))) from None
    except RuntimeError as err:
        if any(marker in str(err) for marker in _TORCH_WRITE_FAILURES):
            raise _explain(path, "the write stopped part-way, most likely no space left on device") from None
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it back at once
    os.umask(mask)
    return mask


def check_writable(folder: str | Path) -> Path:
    """Create `folder` if needed and prove a file can be written in it; OutputError otherwise. → the folder."""
    folder = Path(folder)
    with disk_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    return folder


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary sibling of its own (two processes writing the same file never share one), then
    rename it into place."""
    path = Path(path)
    with disk_errors(path):
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from other users
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


@contextlib.contextmanager
def atomic_folder(target: str | Path):
    """Yields an empty temporary sibling folder of `target` to write into; when the block ends without an error it
    takes the place of `target` (an old `target` is moved aside first and removed after), otherwise it is removed.
    Either way no half-written `target` exists. Write errors become `OutputError`s naming `target`."""
    target = Path(target)
    with disk_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-new-", dir=target.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the folder from other users
    try:
        with disk_errors(target):
            yield staging
            for path in staging.rglob("*"):  # some writers (tempfile-based ones) leave files 0600
                if path.is_file() and not path.is_symlink():
                    os.chmod(path, 0o666 & ~_umask())
            old = None
            if target.exists():  # os.replace cannot replace a non-empty folder: move the old one aside first
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
                os.replace(target, old / target.name)
            os.replace(staging, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
