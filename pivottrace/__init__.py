"""PivotTrace: decide where labelling money goes for RLVR, from unlabeled problems alone.

Pipeline (one module per stage): datasets -> trace -> steps/pivots -> features -> uncertainty
-> route -> store (labels) -> export. See README.md and DESIGN.md.
"""

__version__ = "0.1.0"
