"""`python -m pal ...` (what torchrun and the deepspeed launcher run): the same as the `pal` command."""

import sys

from pal.cli.main import main

sys.exit(main())
