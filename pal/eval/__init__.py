"""Evaluation: `pal infer` / `pal eval` over manifests, metrics with intervals, controls (another clip's audio, the
audio-reliance gap), `pal probe` and the Markdown/HTML report. Inference itself is `inference/`."""
