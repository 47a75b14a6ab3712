"""PivotTrace: decide where labelling money goes for RLVR, from unlabeled problems alone.

Pipeline (one module per stage): datasets -> trace -> steps/pivots -> features -> uncertainty
-> route -> store (labels) -> export. See README.md and DESIGN.md.
"""

__version__ = "0.1.0"

import os as _os

# OpenMP threads that spin while waiting make torch ~50x slower on a busy 2-core machine
# (measured: one 9x576 @ 576x1536 linear, 15.9 ms spinning vs 0.36 ms passive). Set before
# torch is first imported (trace.py imports it lazily); an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
