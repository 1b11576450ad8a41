"""Inference and evaluation: `pal infer` on a trained tiny model, batched = single through the whole inference path
for every connector, the metrics against values computed by hand, bootstrap intervals against a known answer, and
`pal eval` end to end with its baseline and provenance."""

from __future__ import annotations

import functools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import tone, write_jsonl

from pal.cli.main import main
from pal.eval.answer_loss import answer_losses, answer_losses_about_one_clip

# ----------------------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------------------


def test_pal_infer_streams_an_answer_about_a_sound(trained_tiny, curriculum_env, capsys):
    assert main(["infer", "--model", str(trained_tiny), "--audio", str(curriculum_env / "tone2.wav"),
                 "--prompt", "Describe the sound.", "--max-new-tokens", "12"]) == 0
    assert "pitched tone" in capsys.readouterr().out  # the trained captions' form, streamed to the terminal


def test_pal_infer_manifest_is_batched_resumable_and_reports_skips(trained_tiny, curriculum_env, tmp_path, capsys):
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    rows = [{"id": f"q{i}", "audio": str(curriculum_env / f"tone{i}.wav"), "task": "caption",
             "messages": [{"role": "user", "content": "Describe the sound."}]} for i in range(5)]
    rows.append({"id": "bad", "audio": str(tmp_path / "broken.wav"),
                 "messages": [{"role": "user", "content": "<audio>\nDescribe the sound."}]})
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "answers.jsonl"
    args = ["infer", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
            "--batch-size", "2", "--max-new-tokens", "8"]
    assert main(args) == 1  # one file skipped
    captured = capsys.readouterr()
    assert "5 answers" in captured.out and "skipped bad" in captured.err and "unreadable or corrupt" in captured.err
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == [f"q{i}" for i in range(5)] and all(a["answer"] for a in answers)
    # A kill mid-write leaves half a line; the rerun drops it and recomputes only what is missing.
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    assert main(args) == 1
    assert "5 answers in" in capsys.readouterr().out
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in again] == [f"q{i}" for i in range(5)]
    assert again[3]["answer"] == answers[3]["answer"]


def test_an_answers_file_line_without_an_id_is_reported_and_ignored_on_resume(tmp_path, capsys):
    from pal.eval.evaluate import read_rows

    lines = ['{"id": "q0", "answer": "a"}', '{"answer": "no id"}', "[1, 2]", '{"id": "q1", "answer": "b"}']
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(lines) + '\n{"id": "q2", "ans')  # and a line cut off by a kill
    assert list(read_rows(path)) == ["q0", "q1"]  # a KeyError before
    assert "answers.jsonl: line(s) 2, 3 hold no answer row" in capsys.readouterr().err
    assert path.read_text().splitlines() == lines  # the cut-off line dropped; nothing of the user's lost


def test_an_evaluation_encodes_each_clip_once_and_runs_its_shared_prompt_once(trained_tiny, curriculum_env, tmp_path):
    """Several questions about a clip, and the mismatched control, reuse the clip's features; the prompt prefix a
    clip's questions share runs through the LLM once; the answers are those of each question asked alone."""
    from pal.eval.evaluate import run_manifest
    from pal.inference.audio_llm import AudioLLM, Decoding

    questions = ["Describe the sound.", "What do you hear?"]
    rows = [{"id": f"q{i}-{k}", "audio": str(curriculum_env / f"tone{i}.wav"), "task": "caption",
             "messages": [{"role": "user", "content": question}]}
            for i in range(3) for k, question in enumerate(questions)]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    llm = AudioLLM.from_pretrained(trained_tiny)
    encoded, positions = [], []  # clips per encoder call; [B, T] through the LLM's first layer per forward
    original = llm.features
    llm.features = lambda clips: encoded.append(len(clips)) or original(clips)
    hook = llm.model.llm.model.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: positions.append((args[0] if args else kwargs["hidden_states"]).shape[:2]),
        with_kwargs=True)
    decoding = Decoding(max_new_tokens=6)
    run_manifest(llm, manifest, tmp_path / "a.jsonl", decoding, batch_size=4, progress=False)
    grouped, positions[:] = sum(b * t for b, t in positions), []
    run_manifest(llm, manifest, tmp_path / "b.jsonl", decoding, batch_size=3, progress=False)
    assert sum(encoded) == 3  # three clips, six questions, two passes
    positions[:] = []
    alone = [llm.ask(curriculum_env / f"tone{i}.wav", question, decoding) for i in range(3) for question in questions]
    assert grouped < sum(b * t for b, t in positions)  # the shared prefix once per clip, not once per question
    hook.remove()
    answers = [[json.loads(line)["answer"] for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()]
               for n in "ab"]
    assert answers[0] == answers[1] == alone



def test_training_evaluation_and_inference_make_one_batch_of_an_example(trained_tiny, curriculum_env):
    """One examples → batch path: the batch a training step collates from manifest examples (worker `prepare`, then
    `collate`) is the batch inference builds from the same conversations and clips (tokens, labels, placeholders,
    features), and the loss training takes on one example is the teacher-forced loss evaluation reports for it."""
    from pal.data.manifest import validate_manifest
    from pal.inference.audio_llm import AudioLLM
    from pal.processing_pal import to_device

    llm = AudioLLM.from_pretrained(trained_tiny)
    examples = validate_manifest(curriculum_env / "train.jsonl")[:3]
    training = llm.processor.with_settings(padding_side="right")
    batch, bad = training.collate(training.prepare(examples))
    assert not bad and batch["examples"] == 3
    features = llm.features([llm.load(e.audio) for e in examples])
    asked = training([e.messages for e in examples], features)
    for key in ("input_ids", "attention_mask", "audio_token_mask", "labels"):
        assert torch.equal(batch[key], asked[key]), key
    for name, (tokens, mask) in features.items():
        assert torch.equal(batch["audio"][name][1], mask) and torch.equal(batch["audio"][name][0], tokens)
    reported = answer_losses(llm, [e.messages for e in examples], features)
    for i, example in enumerate(examples):
        alone, _ = training.collate(training.prepare([example]))
        with torch.no_grad():
            loss = float(llm.model(**to_device(alone, llm.device)).loss)
        assert math.isclose(loss, float(reported[i]), rel_tol=1e-5), (i, loss, float(reported[i]))


def test_a_clips_answer_losses_with_its_shared_prefix_run_once_are_its_whole_rows_losses(trained_tiny, curriculum_env):
    """The reliance gap scores a clip's questions together, their shared prompt prefix (template, PLITS audio) run
    once: the losses are those of every row run whole, through fewer positions."""
    from pal.inference.audio_llm import AudioLLM

    llm = AudioLLM.from_pretrained(trained_tiny)
    features, bad = llm.file_features([str(curriculum_env / "tone1.wav")])
    assert not bad
    asked = [("Describe the sound.", "A steady high tone."), ("What do you hear?", "a tone"),
             ("Is there a tone? Answer yes or no.", "yes")]
    conversations = [llm.conversation(q) + [{"role": "assistant", "content": a}] for q, a in asked]
    positions = []  # [B, T] through the LLM's first layer per forward
    hook = llm.model.llm.model.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: positions.append((args[0] if args else kwargs["hidden_states"]).shape[:2]),
        with_kwargs=True)
    shared = answer_losses_about_one_clip(llm, conversations, features)
    through_shared, positions[:] = sum(b * t for b, t in positions), []
    expanded = {n: (t.expand(3, -1, -1), m.expand(3, -1)) for n, (t, m) in features.items()}
    whole = answer_losses(llm, conversations, expanded)
    hook.remove()
    assert len(positions) == 1 and through_shared < sum(b * t for b, t in positions), (through_shared, positions)
    assert torch.allclose(shared, whole, rtol=1e-4, atol=1e-5), (shared, whole)
    assert len(set(whole.tolist())) == 3  # three answers, three losses: the comparison is not of one number


CONNECTORS = {
    "plits": dict(connector="plits", plits_config=dict(mlp_downsample=8)),
    "plits_qformer": dict(connector="plits", plits_config=dict(projector="qformer", qformer_latents=4,
                                                               qformer_layers=1, qformer_heads=2, qformer_dim=32)),
    "lal": dict(connector="lal", lal_config=dict(start_layer=1)),
    "pal": dict(connector="pal", routes={"sslam": "lal", "second": "plits"}, lal_config=dict(start_layer=1),
                plits_config=dict(mlp_downsample=16)),
    "pal_summary": dict(connector="pal", lal_config=dict(start_layer=1),
                        plits_config=dict(n_summary=2, qformer_layers=1, qformer_heads=2)),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Clips of different lengths: with `long_audio: split`, 11 s gives two SSLAM windows (1026 tokens), 3 s one."""
    root = tmp_path_factory.mktemp("clips")
    return [tone(root / f"c{i}.wav", f, seconds) for i, (f, seconds) in enumerate([(300, 11.0), (700, 3.0),
                                                                                     (1200, 0.7)])]


@pytest.mark.parametrize("connector", sorted(CONNECTORS))
def test_batched_answers_equal_single_answers(curriculum_env, clips, connector):
    """Mixed audio lengths, left padding, the chat template: a batch of 3 gives the tokens of 3 single runs, and
    several questions sharing one encoding give the tokens of the batch with the clip repeated."""
    from transformers import LlamaForCausalLM

    from pal import PALConfig, PALForConditionalGeneration, PALProcessor
    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from pal.inference.audio_llm import AudioLLM, Decoding
    from pal.llm import load_tokenizer

    names = ["sslam", "second"] if connector == "pal" else ["sslam"]
    ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict(
        {"encoders": {n: {"type": "sslam", "preset": "tiny", "long_audio": "split"} for n in names}}))
    torch.manual_seed(0)
    llm = LlamaForCausalLM.from_pretrained(curriculum_env / "llm")
    model = PALForConditionalGeneration(PALConfig(text_config=llm.config.to_dict(), encoder_dims=ensemble.dims,
                                                  **CONNECTORS[connector]), llm=llm)
    audio_llm = AudioLLM(model, PALProcessor(load_tokenizer(curriculum_env / "llm"), model.config, ensemble=ensemble))
    questions = ["Describe the sound.", "Is there a bell? Answer yes or no.", "How many sounds are there?"]
    decoding = Decoding(max_new_tokens=6)
    model.generation_config.min_new_tokens = 6
    batched = audio_llm.ask_batch(clips, questions, decoding)
    assert batched == [audio_llm.ask(c, q, decoding) for c, q in zip(clips, questions)]
    positions = []  # what the LLM's first layer sees: [B, T] per call
    hook = model.llm.model.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: positions.append((args[0] if args else kwargs["hidden_states"]).shape[:2]),
        with_kwargs=True)
    shared = audio_llm.ask_many(clips[0], questions, decoding)
    seen_shared, positions[:] = sum(b * t for b, t in positions), []
    assert shared == audio_llm.ask_batch([clips[0]] * 3, questions, decoding)
    hook.remove()
    # The prompt prefix the questions share (the template's opening, PLITS audio positions) runs once, not 3 times.
    assert seen_shared < sum(b * t for b, t in positions)


def test_encoders_recorded_with_the_model_are_checked(trained_tiny, tmp_path):
    from pal import PALForConditionalGeneration, PALProcessor
    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from pal.inference.audio_llm import AudioLLM
    from pal.llm import load_tokenizer

    record = json.loads((trained_tiny / "encoders.json").read_text())
    assert record["config"]["encoders"]["sslam"]["preset"] == "tiny" and record["identity"]["sslam"]
    copy = tmp_path / "model"
    shutil.copytree(trained_tiny, copy)
    record["identity"]["sslam"] = "0" * 16  # as if the encoder's weights had changed since training
    (copy / "encoders.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="encoders whose weights or settings have changed"):
        AudioLLM.from_pretrained(copy)
    (copy / "encoders.json").unlink()
    with pytest.raises(FileNotFoundError, match="does not say which encoders"):
        AudioLLM.from_pretrained(copy)
    other = AudioEncoderEnsemble(EnsembleConfig.from_dict({"encoders": {"sslam": {"type": "sslam",
                                                                                  "preset": "small"}}}))
    model = PALForConditionalGeneration.from_pretrained(trained_tiny)
    with pytest.raises(ValueError, match=r"built for encoders \{'sslam': 128\}.*given are \{'sslam': 384\}"):
        AudioLLM(model, PALProcessor(load_tokenizer(trained_tiny), model.config, ensemble=other))


def test_device_map_auto_loads_on_cpu_with_the_same_answers(trained_tiny, curriculum_env):
    from pal.inference.audio_llm import AudioLLM, Decoding

    plain = AudioLLM.from_pretrained(trained_tiny)
    mapped = AudioLLM.from_pretrained(trained_tiny, device_map="auto")
    clip = curriculum_env / "tone1.wav"
    assert mapped.device.type == "cpu"
    assert mapped.ask(clip, "Describe the sound.", Decoding(max_new_tokens=8)) == plain.ask(
        clip, "Describe the sound.", Decoding(max_new_tokens=8))


# ----------------------------------------------------------------------------------------------------------------------
# Metrics against hand-computed values
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer,gold,choices,correct,parsed", [
    ("Yes, there is a bell ringing.", "yes", None, True, True),
    ("No.", "Yes", None, False, True),
    ("I can hear a bell.", "yes", None, False, False),  # no yes/no word: wrong, never guessed
    ("There are three sounds.", "3", None, True, True),
    ("3", "three", None, True, True),
    ("Several sounds.", "2", None, False, False),
    ("The dog barks first.", "a dog", None, True, True),
    ("It is a cat.", "dog", None, False, True),
    ("The answer is a dog barking.", "a dog barking", ["a dog barking", "a cat meowing", "a dog growling"], True, True),
    ("A dog growling, I think.", "a dog barking", ["a dog barking", "a cat meowing", "a dog growling"], False, True),
    ("dog barking or cat meowing", "a dog barking", ["a dog barking", "a cat meowing"], False, True),
])
def test_closed_qa_judgement(answer, gold, choices, correct, parsed):
    from pal.eval.metrics.closed_qa import judge

    assert judge(answer, gold, choices) == (correct, parsed)


def test_closed_qa_accuracy_counts_unparsed_answers():
    from pal.eval.metrics.closed_qa import exact_match

    # Right: "Yes." and "Two of them."; wrong: "no" (parsed), "maybe" (unparsed), "raining" (not the word "rain").
    out = exact_match(["Yes.", "no", "maybe", "Two of them.", "It is raining."], ["yes", "yes", "no", "2", "rain"])
    assert out["accuracy"]["value"] == pytest.approx(2 / 5) and out["accuracy"]["unparsed"] == 1
    assert out["accuracy_yes_no"]["value"] == pytest.approx(1 / 3) and out["accuracy_count"]["n"] == 1


def test_word_error_rate_by_hand():
    from pal.eval.metrics.asr import word_error_rate

    # After Whisper's normaliser: "hello world" vs "hello word" (1 substitution of 2 words);
    # "mister smith is here" vs "smith is here today" (1 deletion + 1 insertion of 4 words).
    out = word_error_rate(["Hello, word!", "Smith is here today."], ["hello world", "Mr. Smith is here."])
    assert out["wer"]["value"] == pytest.approx((1 + 2) / (2 + 4))


def test_bleu4_by_hand_and_caption_metrics_match_the_library():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from pal.eval.metrics.captioning import captioning

    # "the cat sat on the mat" vs "the cat sat on a mat": 1-4-gram precisions 5/6, 3/5, 2/4, 1/3, no brevity penalty.
    out = captioning(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert out["BLEU-4"]["value"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-6)
    # Candidates equal to their only reference, all words distinct across captions: every n-gram's idf is log 2 and
    # every cosine is 1, so CIDEr-D is 10 per caption; ROUGE-L is 1.
    same = captioning(["a dog barks loudly", "rain falls on metal"], [["a dog barks loudly"], ["rain falls on metal"]])
    assert same["CIDEr-D"]["value"] == pytest.approx(10.0) and same["ROUGE-L"]["value"] == pytest.approx(1.0)
    assert same["CIDEr-D"]["ci95"] == pytest.approx([10.0, 10.0])
    # BLEU-4 and METEOR (corpus statistics, resampled our way) equal the library's own corpus values.
    cands = ["a dog barks while a car passes", "rain falls on a roof", "a man speaks softly"]
    refs = [["a dog is barking and a car goes by", "dog barking with traffic"], ["rain falling on a metal roof"],
            ["a woman speaks", "a man is talking quietly"]]
    ours = captioning(cands, refs)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs[i]] for i in range(3)})
    res = tokenizer.tokenize({i: [{"caption": cands[i]}] for i in range(3)})
    assert ours["BLEU-4"]["value"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    assert ours["METEOR"]["value"] == pytest.approx(Meteor().compute_score(gts, res)[0])
    for name in ("CIDEr-D", "BLEU-4", "METEOR", "ROUGE-L"):
        low, high = ours[name]["ci95"]
        assert low <= ours[name]["value"] + 1e-9 and ours[name]["value"] <= high + 1e-9
    assert "nlp.stanford.edu" in ours["SPICE"]["unavailable"]


def test_caption_metrics_without_java_fail_clearly(monkeypatch):
    import shutil as shutil_module

    from pal.eval.metrics.captioning import MetricUnavailable, captioning

    monkeypatch.setattr(shutil_module, "which", lambda name: None)
    with pytest.raises(MetricUnavailable, match="need Java.*default-jre-headless"):
        captioning(["a dog"], [["a dog"]])


def test_classification_nearest_label_and_map_by_hand():
    from pal.eval.metrics.classification import classification, mean_average_precision

    out = classification(["I hear a dog barking.", "Heavy rain is falling.", "An engine revving."],
                         [["dog bark"], ["rain"], ["car engine"]])
    assert out["predictions"] == ["dog bark", "rain", "car engine"] and out["accuracy"]["value"] == 1.0
    # AP by hand: class 0 positives at ranks 1 and 3 → (1/1 + 2/3) / 2; class 1 positive at rank 2 → 1/2.
    scores = np.array([[0.9, 0.1], [0.5, 0.8], [0.4, 0.3]])
    targets = np.array([[1, 0], [0, 0], [1, 1]])
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2)


def test_classification_exact_set_and_listed_label_precision_recall_by_hand():
    from pal.eval.metrics.classification import classification

    labels = ["bell", "dog bark", "rain", "speech"]
    out = classification(["bell, speech.", "A bell rings and rain falls", "speech; dog bark; bell", "speech"],
                         [["bell", "speech"], ["bell", "dog bark"], ["speech", "dog bark"], ["speech", "rain"]], labels)
    # listed: {bell, speech} exact; {bell, rain} one of two; {speech, dog bark, bell} one too many; {speech} one short
    assert out["exact_set"]["value"] == 0.25
    assert out["label_precision"]["value"] == pytest.approx((2 + 1 + 2 + 1) / (2 + 2 + 3 + 1))
    assert out["label_recall"]["value"] == pytest.approx((2 + 1 + 2 + 1) / 8)
    # the one-nearest-label accuracy credits an answer whose single nearest label is any one of its gold labels
    assert out["accuracy"]["value"] > out["exact_set"]["value"]


def test_bootstrap_interval_matches_the_known_answer():
    from pal.eval.bootstrap import mean_with_ci

    # A fair coin, 2000 flips with exactly half heads: the 95% interval of the mean is about 0.5 ± 1.96·sqrt(.25/n).
    flips = np.array([1.0, 0.0] * 1000)
    out = mean_with_ci(flips, resamples=2000, seed=0)
    half = 1.96 * math.sqrt(0.25 / 2000)
    assert out["value"] == 0.5
    assert out["ci95"][0] == pytest.approx(0.5 - half, abs=0.004) and out["ci95"][1] == pytest.approx(0.5 + half, abs=0.004)
    assert mean_with_ci(flips, resamples=2000, seed=0) == out  # seeded: the same interval every time
    assert mean_with_ci(np.full(50, 0.7))["ci95"] == pytest.approx([0.7, 0.7])


def test_a_resample_on_which_the_statistic_is_undefined_is_left_out():
    """A per-class balanced accuracy is undefined on a resample that drew only clips holding the class (6 test scenes
    in the smoke demo): such resamples once made the whole interval NaN. Here the statistic is undefined whenever item
    0 (value 100) is drawn, so the interval comes from the other items alone, between 1 and 5."""
    from pal.eval.bootstrap import bootstrap_ci

    values = np.array([100.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    low, high = bootstrap_ci(6, lambda idx: float(values[idx].mean()) if 0 not in idx else float("nan"))
    assert 1.0 <= low < high <= 5.0
    assert all(math.isnan(x) for x in bootstrap_ci(6, lambda idx: float("nan")))


# ----------------------------------------------------------------------------------------------------------------------
# pal eval end to end
# ----------------------------------------------------------------------------------------------------------------------


def _tone_row(folder, i, task, question, answer, **extra) -> dict:
    """A manifest row about the conftest clip `tone{i}.wav`, id `{task}{i}`."""
    return {"id": f"{task}{i}", "audio": str(folder / f"tone{i}.wav"), "task": task,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


def test_pal_eval_gap_only_gives_each_tasks_gap_from_whole_row_losses_and_generates_nothing(
        trained_tiny, curriculum_env, tmp_path, capsys):
    """`pal eval gap --tasks`: per task, the mean teacher-forced answer loss with each clip's own audio and with
    the next clip's (tone0 → tone1 → tone2 → tone0, spelled out here), recomputed row by row through the plain
    `answer_losses`; the gap overall is the rows' mean; no answers are generated."""
    from pal.inference.audio_llm import AudioLLM

    row = functools.partial(_tone_row, curriculum_env)
    rows = [row(i, "caption", "Describe the sound.", a)
            for i, a in enumerate(["A high pitched tone.", "A low pitched tone.", "A middle pitched tone."])]
    rows += [row(i, "classify", "What kind of sound is it?", label) for i, label in enumerate(["tone", "speech", "bell"])]
    rows += [row(0, "qa", "Is there a tone? Answer yes or no.", "yes")]  # left out by --tasks
    manifest = write_jsonl(tmp_path / "test.jsonl", rows)
    out = tmp_path / "gap.json"
    assert main(["eval", "gap", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
                 "--tasks", "caption,classify"]) == 0
    reliance = json.loads(out.read_text())["reliance"]
    assert not list(tmp_path.glob("gap.*.jsonl"))  # nothing answered
    llm = AudioLLM.from_pretrained(trained_tiny)

    def loss(r, clip):
        features, bad = llm.file_features([str(curriculum_env / f"tone{clip}.wav")])
        assert not bad
        conversation = llm.conversation(r["messages"][0]["content"]) + [r["messages"][1]]
        return float(answer_losses(llm, [conversation], features)[0])

    own = {r["id"]: loss(r, int(r["id"][-1])) for r in rows[:6]}
    other = {r["id"]: loss(r, (int(r["id"][-1]) + 1) % 3) for r in rows[:6]}
    assert set(reliance["by_task"]) == {"caption", "classify"} and reliance["n"] == 6
    for task, part in reliance["by_task"].items():
        ids = [f"{task}{i}" for i in range(3)]
        assert part["n"] == 3
        assert part["answer_loss"] == pytest.approx(np.mean([own[i] for i in ids]), rel=1e-4)
        assert part["answer_loss_mismatched"] == pytest.approx(np.mean([other[i] for i in ids]), rel=1e-4)
        assert part["gap"]["value"] == pytest.approx(np.mean([other[i] - own[i] for i in ids]), rel=1e-3, abs=1e-5)
    assert reliance["gap"]["value"] == pytest.approx(np.mean([other[i] - own[i] for i in own]), rel=1e-3, abs=1e-5)
    assert len(set(own.values())) == 6  # six answers, six losses
    printed = capsys.readouterr().out
    assert "audio-reliance gap" in printed and "classify  answer loss" in printed
    # A task the manifest does not hold is named, with the ones it does.
    assert main(["eval", "gap", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
                 "--tasks", "clasify"]) == 2
    assert "no example of the task(s) clasify; its tasks: caption, classify, qa" in capsys.readouterr().err
    # --tasks belongs to `pal eval gap`: `pal eval score` refuses it, naming it.
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "score", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
              "--tasks", "classify"])
    assert exit_.value.code == 2 and "unrecognized arguments: --tasks classify" in capsys.readouterr().err


def test_pal_eval_scores_every_task_with_baseline_and_provenance(trained_tiny, curriculum_env, tmp_path, capsys):
    """The trained tiny model answers "A high pitched tone." (or the like) to everything, which makes the expected
    scores computable by hand from its own answers file."""
    row = functools.partial(_tone_row, curriculum_env)
    rows = [row(i, "caption", "Describe the sound.", a, references=[a, "a tone"])
            for i, a in enumerate(["A high pitched tone.", "A low pitched tone.", "A middle pitched tone."])]
    rows += [row(i, "classify", "What kind of sound is it?", label, labels=[label])
             for i, label in enumerate(["high pitched tone", "speech", "dog barking"])]
    rows += [row(0, "qa", "Is there a tone? Answer yes or no.", "yes"), row(1, "qa", "How many sounds?", "1")]
    rows += [row(i, "asr", "Transcribe the speech.", text) for i, text in enumerate(["a high pitched tone", "hello"])]
    manifest = write_jsonl(tmp_path / "test.jsonl", rows)
    out = tmp_path / "results.json"
    # The trained model again as the "text-only trained" model: asked without audio it must score as the audio-removed
    # control does (the wiring), which a model really trained without audio would not.
    assert main(["eval", "score", "--model", str(trained_tiny), "--manifest", str(manifest), "--out", str(out),
                 "--max-new-tokens", "10", "--text-only-model", str(trained_tiny)]) == 0
    result = json.loads(out.read_text())
    answers = {r["id"]: r["answer"] for r in map(json.loads, (tmp_path / "results.answers.jsonl").read_text()
                                                 .splitlines())}
    assert set(result["tasks"]) == {"caption", "classify", "qa", "asr"}
    # Recomputed here from the answers file with the metric functions' inputs spelled out.
    from pal.eval.metrics.asr import normalise
    from pal.eval.metrics.closed_qa import judge

    qa = [judge(answers["qa0"], "yes"), judge(answers["qa1"], "1")]
    assert result["tasks"]["qa"]["metrics"]["accuracy"]["value"] == sum(ok for ok, _ in qa) / 2
    assert result["tasks"]["qa"]["metrics"]["accuracy"]["unparsed"] == sum(not parsed for _, parsed in qa)
    import jiwer

    pairs = [(normalise(t), normalise(answers[f"asr{i}"])) for i, t in enumerate(["a high pitched tone", "hello"])]
    errors = sum(jiwer.process_words(r, h).wer * len(r.split()) for r, h in pairs)
    assert result["tasks"]["asr"]["metrics"]["wer"]["value"] == pytest.approx(errors / sum(len(r.split()) for r, _ in pairs))
    classify = result["tasks"]["classify"]["metrics"]
    assert classify["accuracy"]["value"] == sum(p == g for p, g in zip(
        classify["predictions"], ["high pitched tone", "speech", "dog barking"])) / 3
    caption = result["tasks"]["caption"]["metrics"]
    assert caption["CIDEr-D"]["n"] == 3 and caption["CIDEr-D"]["ci95"][0] <= caption["CIDEr-D"]["value"]
    # The same questions without audio, scored the same way.
    assert "accuracy" in result["tasks"]["qa"]["no_audio"] and "CIDEr-D" in result["tasks"]["caption"]["no_audio"]
    plain = [json.loads(line) for line in (tmp_path / "results.no_audio.jsonl").read_text().splitlines()]
    assert len(plain) == len(rows)
    # What reproduces the number.
    assert result["model"]["weights"]["model.safetensors"] and result["manifest"]["sha256_16"]
    assert result["decoding"]["max_new_tokens"] == 10 and result["libraries"]["pycocoevalcap"] != "not installed"
    assert set(result["answer_parsers"]) == {"caption", "classify", "qa", "asr"} and result["date"]
    for task, entry in result["tasks"].items():
        assert entry["text_only_trained"] == entry["no_audio"], task
        assert set(entry["mismatched_audio"]) == set(entry["metrics"]), task  # every score has its control
    mismatched = {r["id"]: r for r in map(json.loads, (tmp_path / "results.mismatched.jsonl").read_text().splitlines())}
    assert all(mismatched[r["id"]]["audio"] != r["audio"] for r in rows)  # every question heard another clip
    assert result["reliance"]["n"] == len(rows) and len(result["reliance"]["gap"]["ci95"]) == 2
    printed = capsys.readouterr().out
    assert "qa        accuracy" in printed and "audio removed:" in printed and "another clip's audio:" in printed
    assert "audio-reliance gap" in printed
    # --workers 2: a second process answers the controls; the same answers and scores.
    (tmp_path / "two").mkdir()
    assert main(["eval", "score", "--model", str(trained_tiny), "--manifest", str(manifest), "--out",
                 str(tmp_path / "two" / "results.json"), "--max-new-tokens", "10", "--text-only-model",
                 str(trained_tiny), "--workers", "2"]) == 0
    assert "controls' process ended" not in capsys.readouterr().out
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["latency"]["beside_the_controls_process"] and not result["latency"]["beside_the_controls_process"]
    assert two["tasks"] == result["tasks"] and two["reliance"] == result["reliance"]
    for suffix in ("answers", "mismatched", "no_audio", "text_only"):
        ours, theirs = ({r["id"]: r for r in map(json.loads, (folder / f"results.{suffix}.jsonl").read_text()
                                                 .splitlines())} for folder in (tmp_path, tmp_path / "two"))
        assert ours == theirs, suffix
