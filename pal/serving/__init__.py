"""Serving a trained model: `pal serve`, an OpenAI-compatible chat API with audio (app.py), its request checks
(requests.py) and the memory of clips it has heard (clip_cache.py)."""
