"""The demo dataset (`pal data demo`): polyphonic scenes of real sounds whose composition is known exactly.

Sources, all installed by Debian packages (`make setup` installs them as root):
- recorded event sounds of the freedesktop sound theme (bell, alarm clock, phone, camera shutter, chimes, paper,
  busy signal) and ALSA's recorded noise (`sound-theme-freedesktop`, `alsa-utils`);
- speech: words spoken by espeak-ng in several voices, and ALSA's recorded spoken channel names (`espeak-ng`);
- beeps and noise synthesised by sox (`sox`, repeatable mode).

A scene (4 s by default) mixes 1-4 sources of different classes (at most one speech) at random onsets and gains.
From each scene: a caption ("A bell rings, then a woman says "seven" while a phone rings."), the classification of
every event, closed questions (is there X? how many sounds? which comes first? which word is spoken?) and the
transcript of the speech. Splits are by scene (80/10/10); some pairs of classes never occur together in training and
validation, and half of the test scenes hold one of them, so the test measures generalisation, not memory.
Everything is a function of the seed: the same seed gives the same files.

Notation: S samples at 16 kHz.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from encoders.audio import load_audio

RATE = 16000
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
ALSA = Path("/usr/share/sounds/alsa")
PACKAGES = {"espeak-ng": "espeak-ng", "sox": "sox libsox-fmt-all", str(FREEDESKTOP): "sound-theme-freedesktop",
            str(ALSA): "alsa-utils"}

# label: (noun phrase for questions, verb phrase for captions, freedesktop files)
EVENTS = {
    "bell": ("a bell", "a bell rings", ["bell.oga"]),
    "alarm clock": ("an alarm clock", "an alarm clock goes off", ["alarm-clock-elapsed.oga"]),
    "phone ringing": ("a ringing phone", "a phone rings", ["phone-incoming-call.oga", "phone-outgoing-calling.oga"]),
    "camera shutter": ("a camera shutter", "a camera shutter clicks", ["camera-shutter.oga"]),
    "chime": ("a chime", "a chime sounds", ["complete.oga", "message-new-instant.oga", "service-login.oga",
                                           "service-logout.oga"]),
    "paper crumpling": ("paper crumpling", "paper is crumpled", ["trash-empty.oga"]),
    "busy signal": ("a busy signal", "a busy signal beeps", ["phone-outgoing-busy.oga"]),
}
SYNTH = {"beep": ("a beep", "a beep sounds"), "noise": ("noise", "noise hisses")}
SPEECH = "speech"
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "red", "green", "blue"]
VOICES = {"en-us": "a man", "en-us+f3": "a woman", "en-gb": "a man", "en-gb+f2": "a woman"}
ALSA_SPEECH = {"Front_Center": "front center", "Front_Left": "front left", "Front_Right": "front right",
               "Rear_Center": "rear center", "Rear_Left": "rear left", "Rear_Right": "rear right",
               "Side_Left": "side left", "Side_Right": "side right"}
HELD_OUT = [("bell", SPEECH), ("phone ringing", "beep"), ("chime", "noise")]  # never together in train / val
NOUNS = {**{k: v[0] for k, v in EVENTS.items()}, **{k: v[0] for k, v in SYNTH.items()}, SPEECH: "speech"}
CLASSES = sorted(NOUNS)
MAX_SOURCE_SECONDS = 2.0
SPEECH_SHARE = 0.4


@dataclass
class Source:
    label: str
    audio: np.ndarray  # [S] float32 at 16 kHz
    phrase: str  # caption phrase, e.g. 'a woman says "seven"'
    name: str  # where it came from
    words: str | None = None  # the transcript of speech


@dataclass
class Event:
    source: Source
    onset: float
    gain_db: float

    @property
    def offset(self) -> float:
        return self.onset + len(self.source.audio) / RATE


@dataclass
class Scene:
    id: str
    split: str
    events: list[Event] = field(default_factory=list)  # sorted by onset

    @property
    def labels(self) -> list[str]:
        return [e.source.label for e in self.events]


def missing_tools() -> list[str]:
    """Debian packages the demo dataset needs that are not installed."""
    missing = []
    for tool, package in PACKAGES.items():
        found = Path(tool).is_dir() if tool.startswith("/") else shutil.which(tool) is not None
        if not found:
            missing.append(package)
    return missing


def _sox(args: list[str], out: Path) -> np.ndarray:
    subprocess.run(["sox", "-R", "-n", "-r", str(RATE), "-c", "1", str(out), *args], check=True, capture_output=True)
    return load_audio(out).numpy()


def _trim(audio: np.ndarray, rng: random.Random) -> np.ndarray:
    """At most MAX_SOURCE_SECONDS: a random stretch of a longer recording (e.g. the 6 s alarm)."""
    longest = int(MAX_SOURCE_SECONDS * RATE)
    if len(audio) <= longest:
        return audio
    start = rng.randrange(0, len(audio) - longest)
    return audio[start : start + longest]


def collect_sources(work: Path, rng: random.Random) -> dict[str, list[Source]]:
    """Every source by class: recorded files, espeak-ng words, sox beeps and noise."""
    missing = missing_tools()
    if missing:
        raise FileNotFoundError(f"the demo dataset needs the Debian packages {missing}: `make setup` installs them "
                                f"as root, or run `apt-get install {' '.join(missing)}`.")
    sources: dict[str, list[Source]] = {label: [] for label in CLASSES}
    for label, (_, phrase, files) in EVENTS.items():
        for name in files:
            audio = _trim(load_audio(FREEDESKTOP / name).numpy(), rng)
            sources[label].append(Source(label, audio, phrase, name))
    for voice, speaker in VOICES.items():
        for word in WORDS:
            path = work / f"speech-{voice}-{word}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), word], check=True)
            sources[SPEECH].append(Source(SPEECH, load_audio(path).numpy(), f'{speaker} says "{word}"',
                                          f"espeak-ng {voice}", word))
    for stem, words in ALSA_SPEECH.items():
        sources[SPEECH].append(Source(SPEECH, load_audio(ALSA / f"{stem}.wav").numpy(), f'a woman says "{words}"',
                                      f"{stem}.wav", words))
    sources["noise"].append(Source("noise", load_audio(ALSA / "Noise.wav").numpy(), SYNTH["noise"][1], "Noise.wav"))
    for i, (kind, seconds) in enumerate([("whitenoise", 0.8), ("pinknoise", 1.2), ("brownnoise", 1.0)]):
        audio = _sox(["synth", str(seconds), kind, "vol", "0.3"], work / f"noise-{i}.wav")
        sources["noise"].append(Source("noise", audio, SYNTH["noise"][1], f"sox {kind}"))
    for i, freq in enumerate([440, 660, 880, 1000, 1320, 1760]):
        audio = _sox(["synth", str(0.3 + 0.1 * (i % 3)), "sine", str(freq), "fade", "0.01", "0", "0.01"],
                     work / f"beep-{i}.wav")
        sources["beep"].append(Source("beep", audio, SYNTH["beep"][1], f"sox sine {freq} Hz"))
    return sources


def _allowed(labels: list[str], split: str) -> bool:
    pairs = {frozenset(p) for p in HELD_OUT}
    together = any(frozenset((a, b)) in pairs for a in labels for b in labels if a != b)
    return split == "test" or not together


def make_scene(scene_id: str, split: str, sources: dict[str, list[Source]], rng: random.Random, seconds: float,
               held_out: bool = False) -> Scene:
    """1-4 sources of distinct classes at random onsets and gains; `held_out` forces one held-out pair in."""
    while True:
        count = rng.choices([1, 2, 3, 4], weights=[2, 3.5, 3, 1.5])[0]
        if held_out:
            labels = list(rng.choice(HELD_OUT))
            labels += rng.sample([c for c in CLASSES if c not in labels and c != SPEECH], max(0, count - 2))
        else:  # speech in about 40 % of the scenes, so spoken-word questions have enough examples
            events = [c for c in CLASSES if c != SPEECH]
            labels = ([SPEECH] if rng.random() < SPEECH_SHARE else []) + rng.sample(events, count)
            labels = labels[:count]
        if _allowed(labels, split):
            break
    events = []
    for label in labels:
        source = rng.choice(sources[label])
        room = max(0.0, seconds - len(source.audio) / RATE)
        events.append(Event(source, round(rng.uniform(0, room), 3), round(rng.uniform(-10, 0), 1)))
    return Scene(scene_id, split, sorted(events, key=lambda e: e.onset))


def mix(scene: Scene, seconds: float) -> tuple[np.ndarray, float]:
    """The scene's waveform [S] and the fraction of its time where two or more sources sound together."""
    length = int(seconds * RATE)
    out = np.zeros(length, dtype=np.float32)
    active = np.zeros(length, dtype=np.int32)
    for e in scene.events:
        audio = e.source.audio / max(1e-4, float(np.sqrt(np.mean(e.source.audio ** 2))))  # unit RMS
        audio = audio * 0.1 * 10 ** (e.gain_db / 20)
        start = int(e.onset * RATE)
        end = min(length, start + len(audio))
        out[start:end] += audio[: end - start]
        active[start:end] += 1
    peak = float(np.abs(out).max())
    if peak > 0.95:
        out *= 0.95 / peak
    return out, float((active >= 2).mean())


def caption(scene: Scene) -> str:
    """Events in onset order; "while" when one starts before the previous ends, ", then" otherwise."""
    text = scene.events[0].source.phrase
    for previous, event in zip(scene.events, scene.events[1:]):
        text += (" while " if event.onset < previous.offset else ", then ") + event.source.phrase
    return text[0].upper() + text[1:] + "."


def rows(scene: Scene, audio: str, rng: random.Random) -> list[dict]:
    """Every question about one scene, as manifest rows."""
    def row(kind: str, task: str, question: str, answer: str, **extra) -> dict:
        return {"id": f"{scene.id}-{kind}", "audio": audio, "task": task, "kind": kind, "messages": [
            {"role": "user", "content": f"<audio>\n{question}"}, {"role": "assistant", "content": answer}], **extra}

    labels = scene.labels
    out = [row("caption", "caption", "Describe what you hear in one sentence.", caption(scene)),
           row("classify", "classify", "Which sounds can you hear? List them.", ", ".join(labels), labels=labels)]
    asked = rng.choice(labels) if rng.random() < 0.5 else rng.choice([c for c in CLASSES if c not in labels])
    out.append(row("presence", "qa", f"Is there {NOUNS[asked]} in the recording? Answer yes or no.",
                   "yes" if asked in labels else "no"))
    out.append(row("count", "qa", "How many different sounds can you hear? Answer with a number.", str(len(labels))))
    if len(scene.events) >= 2 and scene.events[1].onset - scene.events[0].onset >= 0.25:
        first, second = scene.events[0].source.label, scene.events[1].source.label
        a, b = sorted([first, second], key=lambda _: rng.random())
        out.append(row("order", "qa", f"Which comes first: {NOUNS[a]} or {NOUNS[b]}?", f"The {first} comes first.",
                       choices=[first, second]))
    speech = next((e.source for e in scene.events if e.source.label == SPEECH), None)
    if speech is not None:
        out.append(row("word", "qa", "Which word is spoken?", speech.words))
        out.append(row("transcript", "asr", "Transcribe the speech.", speech.words[0].upper() + speech.words[1:] + "."))
    return out


def build(out: str | Path, seed: int = 0, clips: int = 1000, seconds: float = 4.0, val_rows: int = 96) -> dict:
    """Write the dataset under `out`; → the data card (also written as card.json and card.md)."""
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        sources = collect_sources(Path(tmp), rng)
    n_test = n_val = max(1, clips // 10)
    splits = ["train"] * (clips - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    manifests: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    card = {"seed": seed, "clips": clips, "seconds": seconds, "held_out_pairs": HELD_OUT, "classes": CLASSES,
            "scenes": Counter(), "class_counts": {s: Counter() for s in manifests},
            "task_counts": {s: Counter() for s in manifests}, "sources_per_scene": Counter(), "overlap": []}
    for i, split in enumerate(splits):
        scene = make_scene(f"scene{i:05d}", split, sources, rng, seconds, held_out=split == "test" and i % 2 == 0)
        wave, overlap = mix(scene, seconds)
        path = out / "clips" / f"{scene.id}.wav"
        soundfile.write(path, wave, RATE, subtype="PCM_16")
        for r in rows(scene, f"clips/{scene.id}.wav", rng):
            r["split"] = split
            manifests[split].append(r)
            card["task_counts"][split][r["kind"]] += 1
        card["scenes"][split] += 1
        card["class_counts"][split].update(scene.labels)
        card["sources_per_scene"][len(scene.events)] += 1
        card["overlap"].append(overlap)
    train = manifests["train"]
    files = {
        "classify_caption.jsonl": [r for r in train if r["task"] in ("classify", "caption")],
        "closed_qa.jsonl": [r for r in train if r["task"] == "qa"],
        "open_qa.jsonl": [r for r in train if r["task"] in ("caption", "asr")],
        "train.jsonl": train,
        "val.jsonl": random.Random(seed + 1).sample(manifests["val"], min(val_rows, len(manifests["val"]))),
        "test.jsonl": manifests["test"],
    }
    for name, data in files.items():
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    clips_rows = sorted({r["audio"] for r in manifests["train"] + manifests["val"]})
    (out / "clips.jsonl").write_text("".join(json.dumps({"audio": a}) + "\n" for a in clips_rows))
    card["overlap"] = {"mean_fraction_with_2_or_more": round(float(np.mean(card["overlap"])), 4)}
    card["sources_per_scene"] = dict(sorted(card["sources_per_scene"].items()))
    card["files"] = {name: len(data) for name, data in files.items()} | {"clips.jsonl": len(clips_rows)}
    card = json.loads(json.dumps(card))  # Counters → plain dicts
    (out / "card.json").write_text(json.dumps(card, indent=1))
    (out / "card.md").write_text(card_markdown(card))
    return card


def card_markdown(card: dict) -> str:
    lines = [f"# Demo dataset (seed {card['seed']})", "",
             f"{card['clips']} scenes of {card['seconds']} s at 16 kHz: "
             + ", ".join(f"{n} {s}" for s, n in card["scenes"].items())
             + f". Sources per scene: {card['sources_per_scene']}. Mean fraction of time with two or more sounds at "
             f"once: {card['overlap']['mean_fraction_with_2_or_more']}.", "",
             "Held out of train and validation (half of the test scenes hold one): "
             + "; ".join(" + ".join(p) for p in card["held_out_pairs"]) + ".", "",
             "| class | " + " | ".join(card["class_counts"]) + " |", "|---|" + "---|" * len(card["class_counts"])]
    for c in card["classes"]:
        lines.append(f"| {c} | " + " | ".join(str(card["class_counts"][s].get(c, 0)) for s in card["class_counts"]) + " |")
    lines += ["", "| question | " + " | ".join(card["task_counts"]) + " |", "|---|" + "---|" * len(card["task_counts"])]
    kinds = sorted({k for counts in card["task_counts"].values() for k in counts})
    for k in kinds:
        lines.append(f"| {k} | " + " | ".join(str(card["task_counts"][s].get(k, 0)) for s in card["task_counts"]) + " |")
    lines += ["", "Files: " + ", ".join(f"{n} ({c} rows)" for n, c in card["files"].items()) + "."]
    return "\n".join(lines) + "\n"
