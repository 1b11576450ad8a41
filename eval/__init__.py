"""Inference (AudioLLM), `pal infer` / `pal eval`, metrics, the demo and its report. Benchmarks live in `bench/`."""
