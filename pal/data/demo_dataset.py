"""The demo dataset (`pal data demo`): polyphonic scenes of real sounds whose composition is known exactly.

Sources, all installed by Debian packages (`make setup` installs them as root; `PACKAGES` below, licences in
`LICENCES` and in the data card):
- recorded sound events, several recordings per class from several packages where the archive has them: footsteps,
  doors, fire, water and breaking glass (minetest-data); snare, kick drum, cymbals and hand claps (hydrogen-data,
  lmms-common, sonic-pi-samples); guitar and piano (lmms-common, sonic-pi-samples, sound-icons); bells and chimes
  (sound-theme-freedesktop, hydrogen-data, sonic-pi-samples, lmms-common); ALSA's recorded noise (alsa-utils);
- speech: a real voice reading digits (asterisk-core-sounds-en-wav), recorded channel names (alsa-utils,
  sound-theme-freedesktop) and words spoken by espeak-ng in several voices (`espeak-ng`);
- beeps and noise synthesised by sox (`sox`, repeatable mode).

Held-out recordings: about a quarter of each class's recordings (at least one) are heard only in the test split, so a
test scene's every source is a recording the model never heard in training: the test measures hearing a class, not
recognising a waveform. The synthesised classes hold out fixed variants inside the range training hears (beeps at
770 and 1160 Hz between training's 660-1320 Hz; noise mixing the pink and brown that training hears): a new member of
the class, not an extrapolation. Besides, some pairs of classes never occur together in training and validation, and half of
the test scenes hold one of them.

A scene (4 s by default) mixes 1-4 sources of different classes (at most one speech) at random onsets and gains.
From each scene: a caption ("A guitar plays, then a woman says "seven" while someone walks."), the classification of
every event, closed questions (can you hear X? — balanced, 2-4 per scene; how many sounds? which comes first? which
word is spoken?) and the transcript of the speech. In training and validation, presence and count answers state
what is heard before they answer ("I hear guitar, speech; bell: no.", "I hear (a) guitar, (b) speech: 2."); the test
split keeps the bare answers ("no") that the scorer compares a model's first yes/no word or number with. Everything
is a function of the seed: the same seed gives the same files.

Notation: S samples at 16 kHz.
"""

from __future__ import annotations

import hashlib
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

from pal.encoders.audio import AudioError, load_audio

RATE = 16000
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
ALSA = Path("/usr/share/sounds/alsa")
MINETEST = Path("/usr/share/games/minetest/games/minetest_game/mods")
HYDROGEN = Path("/usr/share/hydrogen/data/drumkits")
LMMS = Path("/usr/share/lmms/samples")
SONIC_PI = Path("/usr/share/sonic-pi/samples")
SOUND_ICONS = Path("/usr/share/sounds/sound-icons")
ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
# What the dataset reads → the Debian package that installs it.
PACKAGES = {"espeak-ng": "espeak-ng", "sox": "sox libsox-fmt-all", str(FREEDESKTOP): "sound-theme-freedesktop",
            str(ALSA): "alsa-utils", str(MINETEST): "minetest-data", str(HYDROGEN): "hydrogen-data",
            str(LMMS): "lmms-common", str(SONIC_PI): "sonic-pi-samples", str(SOUND_ICONS): "sound-icons",
            str(ASTERISK): "asterisk-core-sounds-en-wav"}
# Each package's licence of the files used (from /usr/share/doc/PACKAGE/copyright, which has the per-file detail).
LICENCES = {"minetest-data": "CC-BY-SA-3.0 (doors: CC-BY-3.0)", "hydrogen-data": "GPL-2+",
            "lmms-common": "GPL-2+", "sonic-pi-samples": "CC0-1.0", "sound-icons": "GPL-2+",
            "sound-theme-freedesktop": "CC-BY-3.0 (bell, complete), CC-BY-SA-3.0 and GPL-2+ (the others)",
            "alsa-utils": "GPL-2", "asterisk-core-sounds-en-wav": "CC-BY-SA-3.0",
            "espeak-ng": "GPL-3+ (the synthesiser; its output is ours)", "sox": "GPL-2+ (the synthesiser)"}

# label: (noun phrase for questions, verb phrase for captions, [(package, folder, glob)])
RECORDED = {
    "footsteps": ("footsteps", "someone walks", [("minetest-data", MINETEST, "*/sounds/default_*_footstep*.ogg")]),
    "door": ("a door", "a door opens or closes", [
        ("minetest-data", MINETEST, "*/sounds/doors_*.ogg"), ("minetest-data", MINETEST, "*/sounds/xpanes_*door*.ogg"),
        ("sonic-pi-samples", SONIC_PI, "perc_door.flac")]),
    "fire": ("fire", "a fire crackles", [
        ("minetest-data", MINETEST, "*/sounds/fire_fire.*.ogg"), ("minetest-data", MINETEST, "*/sounds/fire_large.ogg"),
        ("minetest-data", MINETEST, "*/sounds/fire_small.ogg"),
        ("minetest-data", MINETEST, "*/sounds/tnt_gunpowder_burning.ogg"),
        ("minetest-data", MINETEST, "*/sounds/default_furnace_active.ogg")]),
    "water": ("water", "water flows", [("minetest-data", MINETEST, "*/sounds/env_sounds_water.*.ogg")]),
    "glass breaking": ("breaking glass", "glass breaks", [
        ("minetest-data", MINETEST, "*/sounds/default_break_glass.*.ogg")]),
    "snare drum": ("a snare drum", "a snare drum is hit", [
        ("hydrogen-data", HYDROGEN, "GMRockKit/Snare*.wav"), ("hydrogen-data", HYDROGEN, "*/808_Snare*.flac"),
        ("lmms-common", LMMS, "drums/snare*.ogg"), ("sonic-pi-samples", SONIC_PI, "drum_snare_*.flac")]),
    "kick drum": ("a kick drum", "a kick drum thumps", [
        ("hydrogen-data", HYDROGEN, "GMRockKit/Kick*.wav"), ("hydrogen-data", HYDROGEN, "*/808_Kick*.flac"),
        ("lmms-common", LMMS, "drums/kick*.ogg"), ("lmms-common", LMMS, "drums/bassdrum*.ogg"),
        ("sonic-pi-samples", SONIC_PI, "drum_bass_*.flac"), ("sonic-pi-samples", SONIC_PI, "drum_heavy_kick.flac")]),
    "cymbal": ("a cymbal", "a cymbal is struck", [
        ("hydrogen-data", HYDROGEN, "GMRockKit/Crash*.wav"), ("hydrogen-data", HYDROGEN, "GMRockKit/*Ride*.wav"),
        ("hydrogen-data", HYDROGEN, "GMRockKit/Splash*.wav"), ("hydrogen-data", HYDROGEN, "GMRockKit/HatOpen*.wav"),
        ("lmms-common", LMMS, "drums/crash*.ogg"), ("lmms-common", LMMS, "drums/ride*.ogg"),
        ("lmms-common", LMMS, "drums/hihat_opened*.ogg"), ("sonic-pi-samples", SONIC_PI, "drum_cymbal_*.flac"),
        ("sonic-pi-samples", SONIC_PI, "drum_splash_*.flac")]),
    "hand clap": ("clapping", "hands clap", [
        ("hydrogen-data", HYDROGEN, "GMRockKit/HandClap.wav"), ("hydrogen-data", HYDROGEN, "*/808_Clap.flac"),
        ("lmms-common", LMMS, "drums/clap*.ogg"), ("lmms-common", LMMS, "misc/applause*.ogg")]),
    "guitar": ("a guitar", "a guitar plays", [
        ("sonic-pi-samples", SONIC_PI, "guit_*.flac"), ("lmms-common", LMMS, "instruments/steel_guitar*.ogg"),
        ("lmms-common", LMMS, "latin/latin_guitar*.ogg"), ("sound-icons", SOUND_ICONS, "guitar-*.wav")]),
    "piano": ("a piano", "a piano plays", [
        ("lmms-common", LMMS, "instruments/piano*.ogg"), ("lmms-common", LMMS, "instruments/e_piano*.ogg"),
        ("sound-icons", SOUND_ICONS, "*piano-*.wav"), ("sonic-pi-samples", SONIC_PI, "ambi_piano.flac")]),
    "bell": ("a bell", "a bell rings", [
        ("sound-theme-freedesktop", FREEDESKTOP, "bell.oga"), ("hydrogen-data", HYDROGEN, "GMRockKit/Bell-*.wav"),
        ("sonic-pi-samples", SONIC_PI, "perc_bell*.flac"), ("lmms-common", LMMS, "misc/dong*.ogg")]),
    "chime": ("a chime", "a chime sounds", [
        ("sound-theme-freedesktop", FREEDESKTOP, "complete.oga"),
        ("sound-theme-freedesktop", FREEDESKTOP, "message-new-instant.oga"),
        ("sound-theme-freedesktop", FREEDESKTOP, "service-log*.oga"),
        ("lmms-common", LMMS, "effects/wind_chimes*.ogg"), ("sonic-pi-samples", SONIC_PI, "elec_chime.flac")]),
}
SYNTH = {"beep": ("a beep", "a beep sounds"), "noise": ("noise", "noise hisses")}
SPEECH = "speech"
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "red", "green", "blue"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOICES = {"en-us": "a man", "en-us+f3": "a woman", "en-gb": "a man", "en-gb+f2": "a woman"}
ALSA_SPEECH = {"Front_Center": "front center", "Front_Left": "front left", "Front_Right": "front right",
               "Rear_Center": "rear center", "Rear_Left": "rear left", "Rear_Right": "rear right",
               "Side_Left": "side left", "Side_Right": "side right"}
HELD_OUT = [("bell", SPEECH), ("guitar", "beep"), ("chime", "noise")]  # never together in train / val
HELD_OUT_SHARE = 0.25  # of each class's recordings, heard only in the test split
NOUNS = {**{k: v[0] for k, v in RECORDED.items()}, **{k: v[0] for k, v in SYNTH.items()}, SPEECH: "speech"}
CLASSES = sorted(NOUNS)
MAX_SOURCE_SECONDS = 2.0
SPEECH_SHARE = 0.4
PRESENCE_PER_SIDE = 2  # "can you hear X?" questions per scene: up to 2 present classes and as many absent ones
# The synthesised classes' test variants lie inside what training hears, so that a held-out variant is a new member of
# the class, not an extrapolation: beeps at pitches between the training ones, and noise whose colour mixes the
# training colours (with the pitches and colour outside the training range, the probe ceiling on the held-out beeps
# and noise was 0.73 and 0.56, against 0.99 for speech: docs/findings.md).
TRAINING_NOISES = [("pinknoise", 1.2), ("brownnoise", 1.0)]  # (sox noise type, seconds), besides ALSA's recording
BEEPS = [(660, 0.4, False), (880, 0.5, False), (1000, 0.3, False), (1320, 0.4, False),  # (Hz, seconds, held out)
         (770, 0.3, True), (1160, 0.5, True)]


@dataclass
class Source:
    label: str
    audio: np.ndarray  # [S] float32 at 16 kHz
    phrase: str  # caption phrase, e.g. 'a woman says "seven"'
    name: str  # the recording: a file, or the synthesiser and its settings
    package: str  # the Debian package it comes from
    words: str | None = None  # the transcript of speech
    held_out: bool = False  # heard only in the test split


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


def _trim(audio: np.ndarray) -> np.ndarray:
    """The recording from its first audible sample (over 1 % of its peak), at most MAX_SOURCE_SECONDS: a one-shot
    keeps its attack, a long recording (a 6 s crash, a fire) its first two seconds."""
    loud = np.flatnonzero(np.abs(audio) > 0.01 * max(1e-6, float(np.abs(audio).max())))
    start = int(loud[0]) if len(loud) else 0
    return audio[start : start + int(MAX_SOURCE_SECONDS * RATE)]


def _held_out(names: list[str], seed: int, label: str) -> set[str]:
    """HELD_OUT_SHARE of a class's recordings (at least one, and one left for training), chosen by the seed."""
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}/{label}/{n}".encode()).hexdigest())
    return set(ranked[: min(len(names) - 1, max(1, round(HELD_OUT_SHARE * len(names))))])


def collect_sources(work: Path, seed: int = 0) -> dict[str, list[Source]]:
    """Every source by class, each marked held out or not: recorded files, spoken words, sox beeps and noise."""
    missing = missing_tools()
    if missing:
        raise FileNotFoundError(f"the demo dataset needs the Debian packages {missing}: `make setup` installs them "
                                f"as root, or run `apt-get install {' '.join(missing)}`.")
    sources: dict[str, list[Source]] = {label: [] for label in CLASSES}
    for label, (_, phrase, patterns) in RECORDED.items():
        for package, folder, pattern in patterns:
            for path in sorted(folder.glob(pattern)):
                try:
                    audio = _trim(load_audio(path).numpy())
                except AudioError:  # e.g. lmms-common ships a few WAV files named .ogg that libsndfile refuses
                    continue
                if len(audio) >= RATE // 20:  # 50 ms: anything shorter is no recording of the class
                    sources[label].append(Source(label, audio, phrase, str(path.relative_to(folder)), package))
    for voice, speaker in VOICES.items():
        for word in WORDS:
            path = work / f"speech-{voice}-{word}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), word], check=True)
            sources[SPEECH].append(Source(SPEECH, load_audio(path).numpy(), f'{speaker} says "{word}"',
                                          f"espeak-ng {voice} {word}", "espeak-ng", word))
    for digit, word in enumerate(DIGITS):
        sources[SPEECH].append(Source(SPEECH, _trim(load_audio(ASTERISK / "digits" / f"{digit}.wav").numpy()),
                                      f'a woman says "{word}"', f"digits/{digit}.wav", "asterisk-core-sounds-en-wav",
                                      word))
    for stem, words in ALSA_SPEECH.items():
        sources[SPEECH].append(Source(SPEECH, load_audio(ALSA / f"{stem}.wav").numpy(), f'a woman says "{words}"',
                                      f"{stem}.wav", "alsa-utils", words))
    sources["noise"].append(Source("noise", _trim(load_audio(ALSA / "Noise.wav").numpy()), SYNTH["noise"][1],
                                   "Noise.wav", "alsa-utils"))
    for i, (kind, seconds) in enumerate(TRAINING_NOISES):
        audio = _sox(["synth", str(seconds), kind, "vol", "0.3"], work / f"noise-{i}.wav")
        sources["noise"].append(Source("noise", audio, SYNTH["noise"][1], f"sox {kind}", "sox"))
    # The held-out noise: pink and brown mixed, from samples past the ones training hears (sox -R repeats its draws).
    pink, brown = (_sox(["synth", str(2 * seconds), kind, "trim", str(seconds), "vol", "0.3"], work / f"mix-{kind}.wav")
                   for kind, seconds in TRAINING_NOISES)
    mixed = 0.5 * (pink[: len(brown)] + brown[: len(pink)])
    mixed *= np.sqrt(0.5 * (np.mean(pink**2) + np.mean(brown**2)) / max(np.mean(mixed**2), 1e-12))
    sources["noise"].append(Source("noise", mixed.astype(np.float32), SYNTH["noise"][1], "sox pinknoise + brownnoise",
                                   "sox", held_out=True))
    for i, (freq, seconds, held_out) in enumerate(BEEPS):
        audio = _sox(["synth", str(seconds), "sine", str(freq), "fade", "0.01", "0", "0.01"], work / f"beep-{i}.wav")
        sources["beep"].append(Source("beep", audio, SYNTH["beep"][1], f"sox sine {freq} Hz", "sox", held_out=held_out))
    for label, found in sources.items():
        if len(found) < 2:
            raise FileNotFoundError(f"class {label!r} has {len(found)} recording(s); the demo holds out whole "
                                    "recordings, so it needs two or more: are its packages complete?")
        if label in SYNTH:  # held-out variants fixed above
            continue
        held = _held_out([f"{x.package}/{x.name}" for x in found], seed, label)
        for x in found:
            x.held_out = f"{x.package}/{x.name}" in held
    return sources


def _allowed(labels: list[str], split: str) -> bool:
    pairs = {frozenset(p) for p in HELD_OUT}
    together = any(frozenset((a, b)) in pairs for a in labels for b in labels if a != b)
    return split == "test" or not together


def make_scene(scene_id: str, split: str, sources: dict[str, list[Source]], rng: random.Random, seconds: float,
               held_out: bool = False) -> Scene:
    """1-4 sources of distinct classes at random onsets and gains, drawn from the held-out recordings in the test
    split and from the others elsewhere; `held_out` forces one held-out pair of classes in."""
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
        source = rng.choice([x for x in sources[label] if x.held_out == (split == "test")])
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


def rows(scene: Scene, audio: str, rng: random.Random, evidence: bool = True) -> list[dict]:
    """Every question about one scene, as manifest rows; `evidence=False` (the test split) keeps the bare answers
    ("no", "2") that the scorer compares a model's first yes/no word or number with."""
    def row(kind: str, task: str, question: str, answer: str, suffix: str = "", **extra) -> dict:
        return {"id": f"{scene.id}-{kind}{suffix}", "audio": audio, "task": task, "kind": kind, "messages": [
            {"role": "user", "content": f"<audio>\n{question}"}, {"role": "assistant", "content": answer}], **extra}

    labels = scene.labels
    listed = ", ".join(labels)
    # Presence and count answers first say what is heard (the classification), then answer from it: the decision
    # follows from a perception the model states, which it learns as classification (docs/findings.md, "Does the model
    # hear?"). Each last step is made local: a presence answer names the asked label again just before its yes/no
    # (a check that the word just written occurs in the list), a count answer letters its list (the count is the
    # last letter's rank). The scorer reads the first yes/no word or number; no class name or letter holds either.
    out = [row("caption", "caption", "Describe what you hear in one sentence.", caption(scene)),
           row("classify", "classify", "Which sounds can you hear? List them.", listed, labels=labels,
               recordings=[f"{e.source.package}/{e.source.name}" for e in scene.events])]
    # Balanced presence questions: up to PRESENCE_PER_SIDE classes that sound, as many that do not.
    side = min(PRESENCE_PER_SIDE, len(labels))
    asked = rng.sample(labels, side) + rng.sample([c for c in CLASSES if c not in labels], side)
    for j, label in enumerate(sorted(asked, key=lambda _: rng.random())):
        decision = "yes" if label in labels else "no"
        out.append(row("presence", "qa", f"Can you hear {NOUNS[label]}? Answer yes or no.",
                       f"I hear {listed}; {label}: {decision}." if evidence else decision, suffix=str(j)))
    lettered = ", ".join(f"({chr(ord('a') + i)}) {x}" for i, x in enumerate(labels))
    out.append(row("count", "qa", "How many different sounds can you hear? Answer with a number.",
                   f"I hear {lettered}: {len(labels)}." if evidence else str(len(labels))))
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
        sources = collect_sources(Path(tmp), seed)
    n_test = n_val = max(1, clips // 10)
    splits = ["train"] * (clips - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    manifests: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    card = {"seed": seed, "clips": clips, "seconds": seconds, "held_out_pairs": HELD_OUT, "classes": CLASSES,
            "scenes": Counter(), "class_counts": {s: Counter() for s in manifests},
            "task_counts": {s: Counter() for s in manifests}, "sources_per_scene": Counter(), "overlap": [],
            "recordings": {c: {"training pool": sum(not x.held_out for x in sources[c]),
                               "held out": sum(x.held_out for x in sources[c]),
                               "packages": sorted({x.package for x in sources[c]})} for c in CLASSES},
            "licences": {p: LICENCES[p] for p in sorted({x.package for found in sources.values() for x in found})}}
    heard: dict[str, dict[str, set]] = {s: {c: set() for c in CLASSES} for s in manifests}
    for i, split in enumerate(splits):
        scene = make_scene(f"scene{i:05d}", split, sources, rng, seconds, held_out=split == "test" and i % 2 == 0)
        wave, overlap = mix(scene, seconds)
        path = out / "clips" / f"{scene.id}.wav"
        soundfile.write(path, wave, RATE, subtype="PCM_16")
        for r in rows(scene, f"clips/{scene.id}.wav", rng, evidence=split != "test"):
            r["split"] = split
            manifests[split].append(r)
            card["task_counts"][split][r["kind"]] += 1
        card["scenes"][split] += 1
        card["class_counts"][split].update(scene.labels)
        card["sources_per_scene"][len(scene.events)] += 1
        for e in scene.events:
            heard[split][e.source.label].add(f"{e.source.package}/{e.source.name}")
        card["overlap"].append(overlap)
    train = manifests["train"]
    files = {
        "classify_caption.jsonl": [r for r in train if r["task"] in ("classify", "caption")],
        "closed_qa.jsonl": [r for r in train if r["task"] == "qa"],
        "open_qa.jsonl": [r for r in train if r["task"] in ("caption", "asr")],
        "train.jsonl": train,
        "val.jsonl": random.Random(seed + 1).sample(manifests["val"], min(val_rows, len(manifests["val"]))),
        "val_all.jsonl": manifests["val"],  # every validation question: what a budget is chosen on
        "test.jsonl": manifests["test"],
    }
    for name, data in files.items():
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    clips_rows = sorted({r["audio"] for r in manifests["train"] + manifests["val"]})
    (out / "clips.jsonl").write_text("".join(json.dumps({"audio": a}) + "\n" for a in clips_rows))
    card["overlap"] = {"mean_fraction_with_2_or_more": round(float(np.mean(card["overlap"])), 4)}
    for c in CLASSES:
        card["recordings"][c]["heard"] = {split: len(heard[split][c]) for split in manifests}
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
             "Held-out recordings: each class's test scenes use only recordings that no training or validation "
             "scene holds. Pairs of classes held out of train and validation (half of the test scenes hold one): "
             + "; ".join(" + ".join(p) for p in card["held_out_pairs"]) + ". The synthesised classes' held-out "
             "variants lie inside what training hears: beeps at " + ", ".join(f"{f} Hz" for f, _, h in BEEPS if h)
             + " (training: " + ", ".join(f"{f}" for f, _, h in BEEPS if not h) + " Hz) and noise mixing the "
             "training's pink and brown noise (training: those two and ALSA's recorded noise).", "",
             "Scenes per class and split, and the class's recordings: how many the training and validation scenes "
             "draw from, how many are held out for the test, how many each split's scenes actually hold.", "",
             "| class | " + " | ".join(f"{s} scenes" for s in card["class_counts"])
             + " | recordings: training pool | held out | heard in " + " | heard in ".join(card["class_counts"])
             + " | packages |", "|---|" + "---|" * (2 * len(card["class_counts"]) + 3)]
    for c in card["classes"]:
        r = card["recordings"][c]
        lines.append(f"| {c} | " + " | ".join(str(card["class_counts"][s].get(c, 0)) for s in card["class_counts"])
                     + f" | {r['training pool']} | {r['held out']} | "
                     + " | ".join(str(r["heard"][s]) for s in card["class_counts"]) + f" | {', '.join(r['packages'])} |")
    lines += ["", "| package | licence of the files used (per-file detail: /usr/share/doc/PACKAGE/copyright) |",
              "|---|---|"] + [f"| {p} | {lic} |" for p, lic in card["licences"].items()]
    lines += ["", "| question | " + " | ".join(card["task_counts"]) + " |", "|---|" + "---|" * len(card["task_counts"])]
    kinds = sorted({k for counts in card["task_counts"].values() for k in counts})
    for k in kinds:
        lines.append(f"| {k} | " + " | ".join(str(card["task_counts"][s].get(k, 0)) for s in card["task_counts"]) + " |")
    lines += ["", "Files: " + ", ".join(f"{n} ({c} rows)" for n, c in card["files"].items()) + "."]
    return "\n".join(lines) + "\n"
