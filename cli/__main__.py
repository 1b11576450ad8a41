"""`python -m cli ...` (what torchrun and the deepspeed launcher run): the same as the `pal` command."""

import sys

from .main import main

sys.exit(main())
