"""Benchmarks (`pal bench NAME`): ratios measured side by side in one run. Evaluation of answers lives in `eval/`."""
