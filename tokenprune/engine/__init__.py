"""The pruning engine: hooks that remove visual tokens per layer, without touching transformers' code.

One `generate()` call, file by file in the order things happen:
- `session.py`: `tp.prune(...)` installs the hooks; each forward's entry picks its phase.
- `checks.py`: what is refused before anything changes (weights, backend, window, inputs).
- `prefill.py`: a prompt with images: cut plan, cuts, scores for the next cut, restore at the final norm.
- `decode.py`: a forward continuing the pruned cache: eviction plan, evictions, masks, scores afterwards.
- `masks.py`, `phase.py`: the masks of pruned layers; the phase protocol the session dispatches to.
Then `tokenprune/cache.py` holds what was kept, and `tokenprune/report.py` what it saved.
"""

from .session import PruningSession, session_of

__all__ = ["PruningSession", "session_of"]
