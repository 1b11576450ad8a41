"""The lifecycle every training recipe shares: `setup()`, `train()`, `save()`, `cleanup()`, and `run()`, which calls
them in that order (torchtune's recipe protocol, `torchtune/recipe_interfaces.py`).

Why a base class: the curriculum (`pal train`) and SSLAM pre-training (`pal sslam pretrain`) are started the same way
by the CLI, `pal demo` and `pal compare`. With one `run()` no caller needs to know which steps a recipe has or call
them in the right order, and a reader finds the same four steps in both recipes. It is deliberately nothing more: no
registry, no hooks, no config handling; each recipe's own methods say what its steps do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Recipe(ABC):
    """A training recipe: a subclass writes `setup` and `train`, and `save` and `cleanup` where it has work for them.
    Its `__init__` checks the settings and fails early, before anything is built."""

    @abstractmethod
    def setup(self) -> None:
        """Build and check what training needs (distributed state, data, model, optimiser) before any step."""

    @abstractmethod
    def train(self):
        """Train, checkpointing as it goes; → a summary of what was trained."""

    def save(self) -> None:  # noqa: B027 - optional: a recipe overrides it where it has work for it
        """What the run leaves once training has ended (the checkpoints written while training are `train`'s)."""

    def cleanup(self) -> None:  # noqa: B027 - optional, as save
        """Let go of what `setup` built. It also runs after a failure, so it must not wait for the other ranks."""

    def run(self):
        """setup → train → save, then cleanup whatever happened; → `train`'s summary."""
        try:
            self.setup()
            result = self.train()
            self.save()
            return result
        finally:
            self.cleanup()
