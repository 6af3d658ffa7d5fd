"""``python -m rlhf_hgt.cli ...``: the ``rlhf-hgt`` command (e.g. for accelerate)."""

import sys

from rlhf_hgt.cli import main

sys.exit(main())
