"""The collector and the code location's own objects: freeze them once loaded, and at exit.

A process that loads the code location (every run worker, the code server, a sensor's evaluation)
holds ~160,000 collector-tracked objects from its imports on (dagster's and ours: classes,
functions, the definitions), alive as long as the process. Python's full collections traverse all
of them each time, and the interpreter's exit traverses them again with everything the run left:
at 3M profiles ~0.4 s of a weekly batch run's full collections and 1.2-1.9 s of every run worker's
exit after its run (docs/speed.md, "The week as deployed"). `gc.freeze()` moves them to a permanent
generation the collector skips; what is made later is collected as before.
"""

from __future__ import annotations

import atexit
import gc


def freeze_loaded_objects() -> None:
    """Freeze every tracked object alive now, and every one alive when the process exits.

    At exit, objects still alive are the process's last state: skipping the final collections
    only skips the collector's traversal (cycles are not finalized, as the interpreter does not
    promise for objects alive at exit; what must be durable is committed and closed by then)."""
    gc.freeze()
    atexit.unregister(gc.freeze)  # once per process, however often the code location is loaded
    atexit.register(gc.freeze)
