"""Plumbing every training recipe shares: DeepSpeed set-up, precision, LR schedule, weight-decay groups, logs, and
atomic, verified checkpoints. The recipes themselves live in `recipes/`."""
