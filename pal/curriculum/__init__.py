"""The three-stage DeepSpeed curriculum: its config, its stage data (mixtures, packing, collation), the text-only
trained baseline and the stage loop (`recipe.py`)."""
