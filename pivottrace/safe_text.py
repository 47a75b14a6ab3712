"""Problem and model text made safe to show: bidirectional-override characters made visible.

An override (U+202E RIGHT-TO-LEFT OVERRIDE and its kin) in a problem or a completion would
reverse the rest of its line on screen, so an annotator could read something other than what
the model saw ("Trojan Source", CVE-2021-42574). The explicit embeddings, overrides and isolates
are replaced by a visible tag such as "[U+202E]"; the implicit marks (LRM, RLM, ALM), which real
right-to-left text uses and which reorder nothing by themselves, are kept. HTML and Markdown
escaping stay with the callers (views.esc, views.md); this module only handles direction.
"""

from __future__ import annotations

BIDI_CONTROLS = (
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # LRE, RLE, PDF, LRO, RLO
    "\u2066", "\u2067", "\u2068", "\u2069",  # LRI, RLI, FSI, PDI
)
_VISIBLE = str.maketrans({char: f"[U+{ord(char):04X}]" for char in BIDI_CONTROLS})


def visible_bidi(text: str) -> str:
    """`text` with every bidi embedding, override and isolate shown as "[U+XXXX]"."""
    return text.translate(_VISIBLE)
