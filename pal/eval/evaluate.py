"""`pal infer --manifest` and `pal eval`: a manifest through a model, then scores per task with 95% intervals.

`run_manifest` answers every example of a manifest in batches, appending to a JSONL file as it goes: a run that stops
resumes where it stopped (rows already there are not recomputed), and files that cannot be read are skipped, listed
with their reason, and tried again next time.

`evaluate` scores the answers by task (`task` of each manifest line; eval/metrics/) and, beside every score, two controls
of the same model on the same questions: each asked with another clip's audio (mismatched audio), and with the audio
removed from the prompt (audio removed); plus the teacher-forced audio-reliance gap (eval/reliance.py) and the
order-free hearing score (eval/hearing.py: classification's `hearing_mAP`, the yes/no questions' `presence_AUC`),
each beside the same controls and the text-only trained model.
The result file records what reproduces it: the model folder and a hash of its weights, the manifest and its hash, the
prompt template, decoding settings, answer parsers, library versions and the date.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tqdm import tqdm

from pal.common.hashing import file_hash
from pal.common.safe_write import atomic_write_json, atomic_write_text, check_writable, disk_errors
from pal.data.manifest import Example, mismatched_audio, read_questions
from pal.inference.audio_llm import AudioLLM, Decoding

from .hearing import hearing_with_controls
from .reliance import reliance_gap

LIBRARIES = ("pal-audio-llm", "torch", "transformers", "pycocoevalcap", "jiwer", "whisper-normalizer",
             "sentence-transformers", "scikit-learn")
PARSERS = {
    "caption": "pycocoevalcap PTB tokenizer; CIDEr-D, BLEU-4, METEOR 1.5, ROUGE-L",
    "classify": "nearest label by cosine similarity of all-MiniLM-L6-v2 embeddings (LTU style)",
    "qa": "normalised exact match: first yes/no word, first number, MMAR word match for choices; unparsed = wrong",
    "asr": "Whisper English normaliser, then WER (jiwer)",
}


def read_rows(path: Path) -> dict[str, dict]:
    """Rows of a results JSONL by id; a line cut off by a kill is dropped (and the file rewritten without it). A line
    that is JSON but no row of ours (no "id") is reported and ignored, and stays in the file."""
    if not path.is_file():
        return {}
    rows, good, foreign = {}, [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        good.append(line)
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            rows[row["id"]] = row
        else:
            foreign.append(number)
    if foreign:
        print(f"{path}: line(s) {', '.join(map(str, foreign[:10]))}{' ...' if len(foreign) > 10 else ''} hold no "
              "answer row (no \"id\"): ignored, and kept in the file.", file=sys.stderr)
    if len(good) != len(path.read_text().splitlines()):
        atomic_write_text(path, "".join(f"{line}\n" for line in good))
    return rows


def run_manifest(llm: AudioLLM, manifest: str | Path | list[Example], out: str | Path, decoding: Decoding | None = None,
                 batch_size: int = 8, with_audio: bool = True, progress: bool = True, label: str | None = None) -> dict:
    """Answer every example of `manifest` (a path, or its examples) into `out` (JSONL, resumable).

    → {"answered", "new", "skipped": {id: why}, "seconds": time spent answering the new ones (audio reading and
    encoding included)}."""
    decoding = decoding or Decoding()
    out = Path(out)
    check_writable(out.parent)
    examples = read_questions(manifest) if isinstance(manifest, (str, Path)) else manifest
    done = read_rows(out)
    todo = [e for e in examples if e.id not in done]
    # With audio, a batch is one clip's questions (up to batch_size): the clip is read and encoded once per model
    # (AudioLLM.file_features, which the mismatched control's pass reuses) and the prompt prefix its questions share,
    # audio included, runs through the LLM once (generate_about_one_clip). Rows without audio go in batches of one
    # task, so short answers are not held to a caption's length. A batch answers as its rows would alone.
    by_clip: dict[tuple[str, ...], list[Example]] = {}  # (questions about several clips: keyed by all of them)
    textual = []
    for e in todo:
        if with_audio and e.audio is not None:
            by_clip.setdefault(e.audios, []).append(e)
        else:
            textual.append(e)
    textual.sort(key=lambda e: e.task)
    batches = [group[i : i + batch_size] for group in list(by_clip.values()) + [textual]
               for i in range(0, len(group), batch_size)]
    skipped, new, seconds = {}, 0, 0.0
    bar = tqdm(total=len(todo), desc=label or ("no-audio baseline" if not with_audio else "answering"), unit="q",
               disable=not progress)
    for batch in batches:
        began = time.perf_counter()
        conversations = [llm.conversation(e.prompt, with_audio and e.audio is not None, len(e.audios)) for e in batch]
        if with_audio and batch[0].audio is not None:
            features, bad = llm.file_features(list(batch[0].audios))
            if bad:
                skipped.update({e.id: next(iter(bad.values())) for e in batch})
                bar.update(len(batch))
                continue
            answers = (llm.generate_about_one_clip(conversations, features, decoding) if len(batch[0].audios) == 1
                       else llm.generate_about_clips(conversations, features, decoding))
        else:
            answers = llm.generate(conversations, None, decoding)
        seconds += time.perf_counter() - began
        with disk_errors(out), open(out, "a") as f:
            for e, answer in zip(batch, answers):
                clips = {"audio": e.audio} if len(e.audios) <= 1 else {"audios": list(e.audios)}
                f.write(json.dumps({"id": e.id, **clips, "task": e.task, "line": e.line,
                                    "question": e.prompt[-1]["content"], "answer": answer,
                                    "reference": e.answer}) + "\n")
        new += len(batch)
        bar.update(len(batch))
    bar.close()
    if skipped:
        atomic_write_json(out.with_suffix(".skipped.json"), skipped)
    return {"answered": len(done) + new, "new": new, "skipped": skipped, "seconds": seconds}


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------


def score_task(task: str, examples: list[Example], answers: list[str], label_set: list[str] | None = None) -> dict:
    """Metrics of one task's answers (same order as `examples`)."""
    if task == "caption":
        from .metrics.captioning import captioning

        return captioning(answers, [e.references or [e.answer] for e in examples])
    if task == "classify":
        from .metrics.classification import classification

        return classification(answers, [e.labels or [e.answer] for e in examples], label_set)
    if task == "qa":
        from .benchmarks import rule_of
        from .metrics.closed_qa import exact_match

        return exact_match(answers, [e.answer for e in examples], [e.choices for e in examples],
                           [rule_of(e) for e in examples])
    if task == "asr":
        from .metrics.asr import word_error_rate

        return word_error_rate(answers, [e.answer for e in examples])
    raise ValueError(f"task {task!r} has no metric; expected one of {sorted(PARSERS)}.")


def score(examples: list[Example], rows: dict[str, dict], probe: dict | None = None,
          encoders: list[str] = ()) -> dict:
    """{task: {"n", "metrics"}} over the examples that have a gold answer and an answered row. `probe`: `pal probe`'s
    result on these clips; classification then also gets `probe_fraction` (pal/eval/probe.py) for the model's
    `encoders`."""
    by_task: dict[str, list[Example]] = {}
    for e in examples:
        if e.answer is not None and e.id in rows and e.task in PARSERS:
            by_task.setdefault(e.task, []).append(e)
    labels = sorted({label for e in by_task.get("classify", []) for label in (e.labels or [e.answer])})
    scores = {task: {"n": len(group), "metrics": score_task(task, group, [rows[e.id]["answer"] for e in group], labels)}
              for task, group in sorted(by_task.items())}
    if probe is not None and "classify" in by_task:
        from .probe import answers_probe_fraction

        group = by_task["classify"]
        fraction = answers_probe_fraction(group, [rows[e.id]["answer"] for e in group], probe, list(encoders))
        if fraction is not None:
            scores["classify"]["metrics"]["probe_fraction"] = fraction
    return scores


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _answers_file(out: Path, kind: str) -> Path:
    """Where `evaluate` keeps one pass's answers: `<out>.<kind>.jsonl` (answers, mismatched, no_audio, text_only)."""
    return out.with_name(f"{out.stem}.{kind}.jsonl")


def _answer_controls(folder: str, encoders, examples: list[Example], swapped: list[Example] | None, out: Path,
                     decoding: Decoding, batch_size: int, threads: int) -> None:
    """The second process of `evaluate(workers=2)`: the same model's controls into their files (another clip's audio,
    the audio removed) while the first process answers with the audio and asks the text-only trained model. The first
    then finds them answered (`run_manifest` resumes) and scores them."""
    import torch

    torch.set_num_threads(threads)
    llm = AudioLLM.from_pretrained(folder, encoders=encoders)
    if swapped is not None:
        run_manifest(llm, swapped, _answers_file(out, "mismatched"), decoding, batch_size, True, False)
    run_manifest(llm, examples, _answers_file(out, "no_audio"), decoding, batch_size, False, False)


def _start_controls_process(llm: AudioLLM, examples: list[Example], swapped: list[Example] | None, out: Path,
                            decoding: Decoding, batch_size: int, threads: int):
    """`_answer_controls` in a spawned process (it loads the model again from its folder) → the process, started."""
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(
        target=_answer_controls, name="pal-eval-controls",
        args=(str(llm.folder), llm.ensemble.config if llm.ensemble is not None else None, examples, swapped, out,
              decoding, batch_size, threads))
    process.start()
    return process


def evaluate(llm: AudioLLM, manifest: str | Path, out: str | Path, decoding: Decoding | None = None,
             batch_size: int = 8, baseline: bool = True, progress: bool = True, text_only: AudioLLM | None = None,
             workers: int = 1, export: tuple[str, ...] = (), probe: dict | None = None) -> dict:
    """Answer, score and write `out` (JSON); answers go to `<out>.answers.jsonl` (and `.mismatched.jsonl`,
    `.no_audio.jsonl`, `.text_only.jsonl`), resumable. `text_only`: a model trained by the same curriculum without
    audio, asked the same questions without audio (the "text_only_trained" control).

    `workers` = 2 on a CPU: a second process answers the mismatched-audio and audio-removed controls while this one
    answers with the audio and asks the text-only model, each with half the threads (the model is loaded again there
    from its folder); the reliance gap follows with all of them. Like two training ranks, two 1-thread processes keep
    2 cores busier than one: decoding is mostly Python and small operators. The answers are the same greedy answers
    either way; if the second process fails, this one answers what it left.

    Rows converted from a benchmark (`pal data convert mmau ...`) are also scored by the benchmark's official rule,
    broken down by its axes, under "benchmarks", beside the same controls. `export`: benchmark names whose official
    predictions file is written beside `out` (R.mmau.json, ...), for the answers with audio and for each control.
    `probe`: `pal probe`'s result (run_probe) with this manifest's clips as its test clips: classification is also
    scored as a fraction of the probe's ceiling, for the answers and each control: the hearing mAP's margin over
    chance (`hearing_probe_fraction`) and the listed labels' balanced accuracy (`probe_fraction`)."""
    import torch

    from .benchmarks import check_export, export_path, export_predictions, score_benchmarks

    decoding = decoding or Decoding()
    out = Path(out)
    examples = read_questions(manifest)
    for name in export:  # before any answering: a wrong name must not cost the run
        check_export(name, examples, manifest)
    unscored = sorted({e.task or "(none)" for e in examples if e.task not in PARSERS})
    answers = _answers_file(out, "answers")
    swapped = mismatched_audio(examples) if baseline else None
    helper, threads = None, torch.get_num_threads()
    if workers > 1 and baseline and llm.folder is not None and llm.device.type == "cpu":
        share = max(1, threads // 2)
        helper = _start_controls_process(llm, examples, swapped, out, decoding, batch_size, share)
        torch.set_num_threads(share)
    try:
        with_audio = run_manifest(llm, examples, answers, decoding, batch_size, True, progress)
        if text_only is not None:
            run_manifest(text_only, examples, _answers_file(out, "text_only"), decoding, batch_size, False, progress,
                         "text-only trained model")
    except BaseException:
        if helper is not None:
            helper.terminate()  # its files keep every whole line; a rerun resumes them
        raise
    finally:
        if helper is not None:
            helper.join()
            torch.set_num_threads(threads)
    if helper is not None and helper.exitcode != 0:
        print(f"pal eval: the controls' process ended with exit code {helper.exitcode}; answering what it left here",
              flush=True)
    # Teacher-forced, large matrix products: with all the threads, once the controls' process is done.
    reliance = reliance_gap(llm, examples, batch_size) if baseline else None
    hearing = hearing_with_controls(llm, examples, text_only, probe, controls=baseline)
    encoders = list(llm.ensemble.config.encoders) if llm.ensemble is not None else []
    rows = read_rows(answers)
    result = {
        "model": {"folder": str(llm.folder), "weights": {p.name: file_hash(p) for p in
                                                         sorted(Path(llm.folder).glob("*.safetensors"))}
                  if llm.folder else {}},
        "manifest": {"path": str(manifest), "sha256_16": file_hash(manifest), "examples": len(examples)},
        "prompt_template": {"chat_template_sha256_16": _text_hash(llm.processor.tokenizer.chat_template or ""),
                            "audio": "`<audio>` then a newline before the first user turn, unless it holds one"},
        "decoding": asdict(decoding), "answer_parsers": PARSERS, "libraries": _versions(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "skipped": with_audio["skipped"], "unscored_tasks": unscored,
        "tasks": score(examples, rows, probe, encoders), "benchmarks": score_benchmarks(examples, rows),
    }
    exports = {name: {"with_audio": str(export_path(out, name))} for name in export}
    for name in export:
        export_predictions(name, examples, rows, export_path(out, name))
    # Latency of answering with audio, from the run that answered (a resumed run keeps the earlier figure).
    previous = json.loads(out.read_text()).get("latency") if out.is_file() else None
    # With workers = 2 it was measured on half the threads, beside the controls' process: not a latency to quote.
    result["latency"] = ({"questions": with_audio["new"], "batch_size": batch_size,
                          "seconds_per_question": with_audio["seconds"] / with_audio["new"],
                          "beside_the_controls_process": helper is not None}
                         if with_audio["new"] else previous)

    def control(key: str, model: AudioLLM, asked: list[Example], suffix: str, audio: bool, label: str) -> None:
        """Ask `asked` (the manifest's questions, perhaps with other audio) into `<out>.<suffix>.jsonl` and score the
        answers against the manifest's gold answers under tasks[task][key]."""
        path = _answers_file(out, suffix)
        run_manifest(model, asked, path, decoding, batch_size, audio, progress, label)
        answered = read_rows(path)
        for task, scores in score(examples, answered, probe, encoders).items():
            result["tasks"].setdefault(task, {"n": 0, "metrics": {}})[key] = scores["metrics"]
        for name, scores in score_benchmarks(examples, answered).items():
            result["benchmarks"][name][key] = scores["metrics"]
        for name in export:  # the control's answers in the benchmark's own file too (R.<suffix>.mmau.json)
            exported = export_path(path, name)
            exports[name][key] = str(exported)
            export_predictions(name, examples, answered, exported)

    if baseline:
        # Controls beside every score. "mismatched_audio": every question asked with another clip's audio (a fixed
        # derangement of the manifest's clips), scored against its own clip's answer: what the model gets without
        # hearing the right clip. "no_audio": the same model with the audio removed from the prompt, which it never
        # saw in training (a model that babbles here proves nothing). The teacher-forced reliance gap beside them.
        if swapped is not None:
            control("mismatched_audio", llm, swapped, "mismatched", True, "mismatched audio")
        control("no_audio", llm, examples, "no_audio", False, "no-audio baseline")
        result["reliance"] = reliance
    if text_only is not None:
        control("text_only_trained", text_only, examples, "text_only", False, "text-only trained model")
        result["text_only_model"] = str(text_only.folder)
    add_hearing(result["tasks"], hearing)
    if exports:
        result["exports"] = exports
    with disk_errors(out):
        atomic_write_json(out, result)
    return result


def add_hearing(tasks: dict, hearing: dict) -> None:
    """The order-free hearing scores (`hearing_with_controls`) into a result's tasks, each beside the same control's
    other metrics."""
    for key, by_task in hearing.items():
        for task, metrics in by_task.items():
            tasks.setdefault(task, {"n": 0, "metrics": {}}).setdefault(key, {}).update(metrics)


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = ["evaluate", "read_rows", "run_manifest", "score", "score_task"]
