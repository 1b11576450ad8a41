"""`python -m pal.curriculum --config YAML [...]`: what each rank of `pal train --nproc N` runs (the same options
as `pal train`, without --nproc)."""

import argparse
import sys

from .command import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m pal.curriculum", description=__doc__)
add_arguments(parser)
sys.exit(run(parser.parse_args()))
