"""Plumbing every training recipe shares: DeepSpeed set-up, precision, LR schedule, weight-decay groups, logs, and
atomic, verified checkpoints. The recipes themselves are
pal/curriculum/recipe.py and pal/pretraining/recipe.py."""
