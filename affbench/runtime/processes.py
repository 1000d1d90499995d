"""How long a process lives: worker and rank processes that end when whoever started them is gone."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent: int, *, interval: float = 0.2, name: str = "exit-with-parent") -> None:
    """End this process (``os._exit(1)``, no clean-up) soon after its parent ``parent`` is gone.

    A killed launcher (SIGKILL, a lost node) leaves its children running: they would go on writing
    into a folder that the next run resumes from or prepares again. The parent's death shows as a
    new parent process id, which a daemon thread polls every ``interval`` seconds.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)  # no clean-up: the next run redoes what this process left unfinished

    threading.Thread(target=watch, name=name, daemon=True).start()
