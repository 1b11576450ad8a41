"""`pal data convert BENCHMARK`: the field's benchmarks, from their official release files to our manifest.

    mmau          mmau-test-mini.json / mmau-test.json (a JSON list; test answers are withheld: rows without one)
    mmar          MMAR-meta.jsonl
    air-bench     AIR-Bench's Foundation_meta.json (single-choice questions over 19 tasks)
    librispeech   a split folder (test-clean, test-other): <speaker>/<chapter>/<speaker>-<chapter>.trans.txt + .flac
    clotho-aqa    (converters.py) the split's CSV: file_name, QuestionText, answer, confidence

Each row keeps the official row it came from under `benchmark.row`, unchanged, so that `pal eval score --export`
writes back exactly what the benchmark's own scorer reads, plus the model's answer under the field it reads
(docs/benchmarks.md). `benchmark.breakdown` names the fields results are broken down by (task,
difficulty, category, ...). Multiple-choice questions carry their `choices`, and the prompt lists them in the
benchmark's own wording. Field names are the official ones; the audio is released apart from the metadata and is
looked up under `--audio-dir` at the path each release names.
"""

from __future__ import annotations

from pathlib import Path

from pal.data.converters import Rejected, _json_items, _read_text, _turns

# Results are broken down by these official fields (docs/benchmarks.md): each benchmark's own reporting axes.
BREAKDOWNS = {
    "mmau": ("task", "difficulty", "category", "sub-category"),
    "mmar": ("modality", "category", "sub-category"),
    "air-bench": ("task_name", "task"),  # "task": task_name_dataset_name, the official scorer's grouping
    "librispeech": (),
    "clotho-aqa": ("answer_type",),
}
ASR_PROMPT = "Transcribe the speech."
# AIR-Bench foundation's official instruction, then the question, then one "A. choice" line per option.
AIR_BENCH_INSTRUCTION = ("Choose the most suitable answer from options A, B, C, and D to respond the question in "
                         "next line, you may only choose A or B or C or D.")
LETTERS = "ABCD"


def choice_prompt(question: str, choices: list[str]) -> str:
    """MMAU's and MMAR's question and choices, verbatim. Neither release has a prompt of its own (no inference script
    in either repository), so the instruction is ours: the choices without letters, answered in their words, since
    the official string match scores a bare letter as wrong."""
    return f"{question}\nOptions:\n" + "\n".join(f"- {c}" for c in choices) + "\nAnswer with one of the options."


def air_bench_prompt(item: dict) -> str:
    """AIR-Bench's official foundation prompt (Inference_Foundation.py): the instruction, the question, then always the
    four lines A-D; a question with fewer choices shows "C. None" / "D. None" there, as the official script does."""
    return (f"{AIR_BENCH_INSTRUCTION}\n{item['question']}\n"
            + "\n".join(f"{letter}. {item.get(f'choice_{letter.lower()}')}" for letter in LETTERS))


def _relative(path: str) -> str:
    return path[2:] if path.startswith("./") else path


def _choice_problem(item: dict, question: str, answer: str | None) -> str | None:
    choices = item.get("choices")
    if not isinstance(question, str) or not question.strip():
        return "missing question"
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        return f"choices = {choices!r}: expected a list of two or more non-empty strings"
    if answer is not None and answer not in choices:
        return f"the answer {answer!r} is not one of the choices {choices}"
    return None


def _benchmark_row(name: str, row: dict, breakdown: dict, question: str, answer: str | None, audio: Path,
                   choices: list[str] | None = None, task: str = "qa", notes: list[str] | None = None) -> dict:
    turns = _turns(question, answer) if answer is not None else _turns(question, "")[:1]
    out = {"id": f"{name}-{breakdown.pop('_id')}", "audio": str(audio), "task": task, "messages": turns,
           "benchmark": {"name": name, "row": row, "breakdown": breakdown, **({"notes": notes} if notes else {})}}
    if choices:
        out["choices"] = choices
    return out


def _objects(path: Path) -> tuple[list[tuple[str, dict]], Rejected]:
    """A release's JSON list or JSON lines → ([(where, item)] for its objects, the rest set aside with why)."""
    items, rejected = _json_items(path)
    objects = []
    for where, item in items:
        if isinstance(item, dict):
            objects.append((where, item))
        else:
            rejected.append((where, f"expected an object, found {type(item).__name__}"))
    return objects, rejected


def _multiple_choice(name: str, path: Path, audio_dir: Path, audio_key: str) -> tuple[list[dict], Rejected]:
    """MMAU and MMAR: one question per item with `choices` and the answer as the text of one choice."""
    items, rejected = _objects(path)
    rows = []
    for where, item in items:
        answer = item.get("answer") or None  # the test split withholds it
        # An empty choice cannot be an answer, and the official string match gives it no tokens, so it changes no
        # score: it is left out of the prompt, and the row (which the official scorer counts) is kept, saying so.
        choices = item.get("choices")
        offered = [c for c in choices if not (isinstance(c, str) and not c.strip())] if isinstance(choices, list) \
            else choices
        problem = ("missing id" if not item.get("id") else f"missing {audio_key}" if not item.get(audio_key)
                   else _choice_problem({"choices": offered}, item.get("question"), answer))
        if problem:
            rejected.append((f"{where} ({item.get('id', 'no id')})", problem))
            continue
        notes = ([f"{len(choices) - len(offered)} empty choice(s) of the release left out of the prompt"]
                 if len(offered) < len(choices) else None)
        breakdown = {key: str(item.get(key, "")) for key in BREAKDOWNS[name]} | {"_id": item["id"]}
        rows.append(_benchmark_row(name, item, breakdown, choice_prompt(item["question"], offered), answer,
                                   audio_dir / _relative(item[audio_key]), offered, notes=notes))
    return rows, rejected


def mmau(path: Path, audio_dir: Path, **_) -> tuple[list[dict], Rejected]:
    return _multiple_choice("mmau", path, audio_dir, "audio_id")


def mmar(path: Path, audio_dir: Path, **_) -> tuple[list[dict], Rejected]:
    return _multiple_choice("mmar", path, audio_dir, "audio_path")


def air_bench(path: Path, audio_dir: Path, **_) -> tuple[list[dict], Rejected]:
    """The gold answer is the letter of `answer_gt` among the choices: the official prompt asks for a letter."""
    items, rejected = _objects(path)
    rows = []
    for where, item in items:
        choices = [item[k] for k in ("choice_a", "choice_b", "choice_c", "choice_d") if item.get(k) is not None]
        missing = [k for k in ("path", "question", "choice_a", "choice_b", "answer_gt", "task_name", "dataset_name",
                               "uniq_id") if item.get(k) in (None, "")]
        problem = f"missing {missing}" if missing else _choice_problem({"choices": [str(c) for c in choices]},
                                                                       item["question"], str(item["answer_gt"]))
        if problem:
            rejected.append((f"{where} ({item.get('uniq_id', 'no uniq_id')})", problem))
            continue
        choices = [str(c) for c in choices]
        task = f"{item['task_name']}_{item['dataset_name']}"
        audio = Path(item["path"])
        if item["task_name"] == "Audio_Grounding":  # its release holds .flac files where the metadata says .wav
            audio = audio.with_suffix(".flac")
        breakdown = {"task_name": item["task_name"], "task": task, "_id": item["uniq_id"]}
        rows.append(_benchmark_row("air-bench", item, breakdown, air_bench_prompt(item),
                                   LETTERS[choices.index(str(item["answer_gt"]))], audio_dir / task / audio, choices))
    return rows, rejected


def librispeech(path: Path, audio_dir: Path, **_) -> tuple[list[dict], Rejected]:
    """`path`: a split folder; each chapter's `.trans.txt` lists `UTTERANCE-ID TRANSCRIPT`, the audio beside it."""
    if not path.is_dir():
        raise ValueError(f"{path}: librispeech converts a split folder (e.g. LibriSpeech/test-clean), which holds "
                         "<speaker>/<chapter>/<speaker>-<chapter>.trans.txt and the .flac files.")
    rows, rejected = [], []
    listings = sorted(path.glob("*/*/*.trans.txt"))
    if not listings:
        raise ValueError(f"{path}: no <speaker>/<chapter>/*.trans.txt here; give a LibriSpeech split folder.")
    for listing in listings:
        for number, line in enumerate(_read_text(listing).splitlines(), start=1):
            if not line.strip():
                continue
            utterance, _, text = line.strip().partition(" ")
            if not text.strip():
                rejected.append((f"{listing.name} line {number}", "no transcript after the utterance id"))
                continue
            row = {"utterance_id": utterance, "transcript": text.strip()}
            rows.append(_benchmark_row("librispeech", row, {"_id": utterance}, ASR_PROMPT, text.strip(),
                                       listing.parent / f"{utterance}.flac", task="asr"))
    return rows, rejected


CONVERTERS = {"mmau": mmau, "mmar": mmar, "air-bench": air_bench, "librispeech": librispeech}


__all__ = ["BREAKDOWNS", "CONVERTERS", "air_bench_prompt", "choice_prompt"]
