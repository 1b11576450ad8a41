"""Reports from plain result dicts: a Markdown file and a self-contained HTML page (images embedded).

A report is a list of sections; each is a heading plus blocks: paragraphs, tables (a header and rows) and images
(PNG files). Plotting stays with the callers; this file only lays results out. Numbers are formatted, never computed.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    caption: str = ""


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph), Table or Image


def metric_cell(metric: dict | None, digits: int = 3) -> str:
    """"0.812 [0.770, 0.851]" for {"value", "ci95"}; the reason for an unavailable metric; "–" for none."""
    if not metric:
        return "–"
    if "unavailable" in metric:
        return "unavailable"
    low, high = metric["ci95"]
    return f"{metric['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def gap_lines(reliance: dict) -> list[str]:
    """The audio-reliance gap as printed by `pal eval`: overall, then per task, with 95% intervals."""
    gap = reliance["gap"]
    lines = [f"audio-reliance gap (answer loss with another clip's audio minus with its own, nats/token): "
             f"{gap['value']:+.4f} [{gap['ci95'][0]:+.4f}, {gap['ci95'][1]:+.4f}], n={reliance['n']}"]
    for task, part in reliance.get("by_task", {}).items():
        low, high = part["gap"]["ci95"]
        lines.append(f"  {task:9s} answer loss {part['answer_loss']:.4f}, with another clip's audio "
                     f"{part['answer_loss_mismatched']:.4f}: gap {part['gap']['value']:+.4f} [{low:+.4f}, {high:+.4f}], "
                     f"n={part['n']}")
    return lines


def result_lines(result: dict) -> list[str]:
    """`pal eval`'s results as printed: each task's metrics with their intervals and controls, then the gap."""
    lines = []
    for task, entry in result["tasks"].items():
        for name, metric in entry["metrics"].items():
            if isinstance(metric, dict) and "value" in metric:
                low, high = metric["ci95"]
                controls = beside(entry, name)
                lines.append(f"{task:9s} {name:16s} {metric['value']:.4f}  [{low:.4f}, {high:.4f}]  n={metric['n']}"
                             f"{controls}")
                lines += explanation_lines(name, metric)
            elif isinstance(metric, dict) and "unavailable" in metric:
                lines.append(f"{task:9s} {name:16s} unavailable: {metric['unavailable']}")
    lines += benchmark_lines(result.get("benchmarks", {}))
    return lines + (gap_lines(result["reliance"]) if result.get("reliance") else [])


def explanation_lines(name: str, metric: dict) -> list[str]:
    """What a score is made of, printed under it, for the scores that are ratios or have a chance level."""
    pad = f"{'':9s} {'':16s}"
    if name == "probe_fraction":
        return [f"{pad} = (listed-label balanced accuracy {metric['model']:.4f} - 0.5) / "
                f"(the {metric['encoder']} probe's {metric['probe']:.4f} - 0.5) on the same clips"]
    if name == "hearing_mAP":
        return [f"{pad} chance (each class's prevalence) {metric['chance']:.4f}; per class AP over clips of the "
                "likelihood of the class's name as the answer (eval/hearing.py)"]
    if name == "hearing_probe_fraction":
        return [f"{pad} = (hearing mAP {metric['model']:.4f} - chance {metric['chance']:.4f}) / (the "
                f"{metric['encoder']} {metric['readout']} probe's {metric['ceiling']:.4f} - chance) on the same clips"]
    return []


def hearing_lines(hearing: dict) -> list[str]:
    """The order-free hearing scores of `pal eval gap` (eval/hearing.py) with their controls, as printed."""
    lines = []
    for task, metrics in hearing.get("metrics", {}).items():
        for name, metric in metrics.items():
            lines.append(f"{task:9s} {name:16s} {metric_cell(metric, 4)}  n={metric['n']}"
                         f"{beside(hearing, task, name)}")
            lines += explanation_lines(name, metric)
    return lines


def beside(entry: dict, *keys: str) -> str:
    """"   another clip's audio: 0.4120 ..." for each control of a result entry that holds entry[control][*keys]."""
    cells = []
    for control, label in CONTROLS.items():
        cell = entry.get(control, {})
        for key in keys:
            cell = cell.get(key, {}) if isinstance(cell, dict) else {}
        if isinstance(cell, dict) and "value" in cell:
            cells.append(f"   {label}: {cell['value']:.4f}")
    return "".join(cells)


def benchmark_lines(benchmarks: dict) -> list[str]:
    """Each benchmark's official score with its interval and controls, then its breakdowns (eval/benchmarks.py)."""
    lines = []
    for name, entry in benchmarks.items():
        metrics = entry["metrics"]
        for key, metric in metrics.items():
            if isinstance(metric, dict) and "value" in metric:
                controls = beside(entry, key)
                lines.append(f"{name} (official rule) {key}: {metric_cell(metric, 4)}  n={metric['n']}{controls}")
        if "failures" in metrics:
            lines.append(f"  {metrics['failures']} response(s) with no letter A-D: failures, left out of the accuracy"
                         " as the official scorer does")
        for axis, values in metrics.get("by", {}).items():
            for value, metric in values.items():
                controls = beside(entry, "by", axis, value)
                lines.append(f"  {axis} {value or '(none)'}: {metric_cell(metric, 4)}  n={metric['n']}{controls}")
    return lines


def probe_lines(result: dict) -> list[str]:
    """`pal probe`'s results as printed: each encoder's balanced accuracy and mAP, then per class."""
    lines = [f"probe: {result['train_clips']} training clips, {result['test_clips']} test clips, "
             f"{len(result['classes'])} classes; the ceiling is the read-out with the best cross-validated mAP"]
    for name, scores in result["encoders"].items():
        lines.append(f"{name:14s} ceiling ({scores.get('readout', 'linear')}): mAP {metric_cell(scores['mAP'])}   "
                     f"balanced accuracy {metric_cell(scores['balanced_accuracy'])}")
        for readout, found in scores.get("readouts", {}).items():
            knob = next(k for k in found if k not in ("cv_mAP", "cv", "train_mAP", "test_mAP"))
            lines.append(f"    {readout:8s} {knob} = {found[knob]:g}: mAP training {found['train_mAP']:.3f}, "
                         f"cross-validated {found['cv_mAP']:.3f}, test {found['test_mAP']:.3f}")
        for label, cell in scores["classes"].items():
            one_sided = math.isnan(cell["value"])  # every test clip has the label, or none has
            lines.append(f"    {label:28s} {'one-sided test set' if one_sided else metric_cell(cell)}"
                         f"   ({cell['positives']} positives)")
    return lines


def metrics_table(result: dict) -> Table:
    """One row per task and metric of a `pal eval` result, with its controls beside it: another clip's audio, and
    the audio removed (from a model that never saw a prompt without audio)."""
    rows = []
    for task, entry in result["tasks"].items():
        for name, metric in entry["metrics"].items():
            if isinstance(metric, dict) and ("value" in metric or "unavailable" in metric):
                controls = [metric_cell(entry.get(key, {}).get(name)) for key in CONTROLS]
                rows.append([task, name, str(metric.get("n", "")), metric_cell(metric), *controls])
    return Table(["task", "metric", "n", "with audio [95% CI]", *CONTROLS.values()], rows)


def reliance_table(reliance: dict) -> Table:
    """The teacher-forced reliance gap of a `pal eval` result (eval/reliance.py), overall and one row per task: the
    gold answers' loss with each clip's own audio, with another clip's, and the gap with its interval."""
    parts = [("all", reliance), *reliance.get("by_task", {}).items()]
    rows = [[task, str(part["n"]), f"{part['answer_loss']:.3f}", f"{part['answer_loss_mismatched']:.3f}",
             metric_cell(part["gap"])] for task, part in parts]
    return Table(["task", "n", "answer loss, own audio", "another clip's audio", "gap [95% CI]"], rows)


# The controls of a `pal eval` result, by key, as the reports head their columns.
CONTROLS = {"mismatched_audio": "another clip's audio", "text_only_trained": "text-only trained model",
            "no_audio": "audio removed"}


def to_markdown(title: str, sections: list[Section], folder: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in block.rows]
            elif isinstance(block, Image):
                lines.append(f"![{block.caption}]({Path(block.path).resolve().relative_to(folder.resolve())})"
                             if Path(block.path).resolve().is_relative_to(folder.resolve())
                             else f"![{block.caption}]({block.path})")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


def to_html(title: str, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;margin:.5em 0}"
             "figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-size:.9em;color:#555}"
             f"</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                               for row in block.rows)
                parts.append(f"<table><tr>{head}</tr>{body}</table>")
            elif isinstance(block, Image):
                data = base64.b64encode(Path(block.path).read_bytes()).decode()
                parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(block.caption)}'>"
                             f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{html.escape(block)}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(folder: str | Path, title: str, sections: list[Section], name: str = "report") -> tuple[Path, Path]:
    """`<folder>/<name>.md` and `<folder>/<name>.html` (self-contained)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, page = folder / f"{name}.md", folder / f"{name}.html"
    md.write_text(to_markdown(title, sections, folder))
    page.write_text(to_html(title, sections))
    return md, page
