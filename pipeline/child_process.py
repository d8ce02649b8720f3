"""Spawned child processes that run only infoplane's code, never the caller's script."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def main_module_hidden():
    """Start a spawned child without re-importing the parent's `__main__`.

    The archive writer and the figure writers run only the library's code; re-importing a user's
    script in the child would run its training loop a second time when the script has no
    `if __name__ == "__main__"` guard.
    """
    main = sys.modules["__main__"]
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    main.__spec__ = None
    if "__file__" in saved:
        del main.__file__
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)
