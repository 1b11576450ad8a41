"""The public inference API: `AudioLLM` (a trained folder + its encoders: ask, ask many questions about one clip,
generate) between the model (`pal/`) and evaluation (`eval/`)."""
