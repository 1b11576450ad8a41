"""Where the toolkit keeps what it materialises once per machine (the default LLM, Whisper-base)."""

from __future__ import annotations

import os
from pathlib import Path


def pal_home() -> Path:
    """The cache folder for materialised models: `$PAL_HOME`, else `~/.cache/pal`."""
    return Path(os.environ.get("PAL_HOME", Path.home() / ".cache" / "pal")).expanduser()
