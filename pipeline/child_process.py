"""Spawned child processes that run only infoplane's code, never the caller's script, and
end with their parent."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time


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


def exit_with_parent(parent: int) -> None:
    """Exit this process as soon as `parent` is gone (checked every half second), from a daemon
    thread: the main thread may be blocked for ever, reading from a pipe it holds both ends of
    (a queue's) what the killed parent had only half sent. `parent` is passed in, not read
    here: the child may start after its parent died."""
    threading.Thread(target=_exit_once_orphaned, args=(parent,), daemon=True).start()


def _exit_once_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
