"""The text-only trained baseline: the same curriculum on the same questions with the audio removed.

It is the prior a model reaches without hearing (the answers' form and the dataset's label frequencies), trained as
long and on as many questions as the audio model, so that a score beside it says what hearing adds. A model asked
without audio that never saw a prompt without audio is not that baseline: it babbles.

`text_only_curriculum` rewrites a curriculum config: every manifest (training and validation) without its audio, into
a folder of text-only manifests, each row keeping its clip as its packing `group`. Everything else stays: a stage
that packs a clip's questions (`pack_questions`) packs the same questions together, so each step sees the same
questions. A stage that trains the connector alone is left out when the connectors are PLITS and LAL: without audio
none of their parameters takes part in the loss, so such a stage would leave the model exactly as it found it
(tests/test_text_only.py checks their gradients are zero). Flamingo-style cross-attention blocks are kept whole:
their gated FFN acts on every text position, audio or not.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

from pal.data.manifest import write_without_audio

from .config import CurriculumConfig


def text_only_curriculum(config: CurriculumConfig, manifests_dir: str | Path) -> CurriculumConfig:
    """A copy of `config` that trains on its manifests with the audio removed (written under `manifests_dir`, one
    file per source manifest), without the connector-only stages that cannot change it, everything else the same."""
    config = deepcopy(config)
    connector = config.model.connector
    text_blocks = connector.get("connector") == "xattn" or "xattn" in (connector.get("routes") or {}).values()
    kept = [stage for stage in config.stages if text_blocks or set(stage.trainable) != {"connector"}]
    if not kept:
        raise ValueError("every stage trains the connector alone: a text-only baseline of this curriculum is the bare "
                         "LLM; ask it with `pal eval score --text-only-model` pointed at a model folder instead.")
    config.stages = kept
    folder = Path(manifests_dir)
    written: dict[str, str] = {}

    def without(path: str) -> str:
        if path not in written:
            written[path] = str(write_without_audio(path, folder / f"{len(written):02d}-{Path(path).name}"))
        return written[path]

    for stage in config.stages:
        for source in stage.data:
            source.manifest = without(source.manifest)
        if stage.val_manifest:
            stage.val_manifest = without(stage.val_manifest)
    return config
