"""Single key presses -> requests, on a thread of their own (ROS-free).

`collect_node` runs one on its terminal: space = start, n / right arrow = save and record the next,
r / left arrow = discard and record again, q / Esc = save and stop. A terminal is put in cbreak mode
(keys arrive one by one, without Enter) while the thread runs and restored at stop; any other file
descriptor (a pipe) is read as it is.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from typing import Any

EPISODE_KEYS = {" ": "start", "n": "next", "\x1b[C": "next", "r": "rerecord", "\x1b[D": "rerecord",
                "q": "stop_save", "\x1b": "stop_save"}
EPISODE_KEYS_HELP = "keys: n/right = save + next episode, r/left = re-record, q/Esc = save + stop, space = start"
_ESCAPE_WAIT_S = 0.03  # an arrow key's bytes follow its Esc at once; a lone Esc is the Esc key


class KeyThread(threading.Thread):
    """Reads keys from `fd` and calls `post(keys[key])` for each known one (other keys are ignored)."""

    def __init__(self, post: Callable[[str], None], fd: int, keys: dict[str, str] = EPISODE_KEYS) -> None:
        super().__init__(name="keyboard", daemon=True)
        self._post = post
        self._fd = fd
        self._keys = keys
        self._halt = threading.Event()  # not _stop: Thread uses that name
        self._saved: Any = None  # the terminal's settings, while in cbreak mode

    def run(self) -> None:
        if os.isatty(self._fd):
            import termios
            import tty

            try:
                self._saved = termios.tcgetattr(self._fd)
                tty.setcbreak(self._fd)
            except termios.error:
                return
        try:
            while not self._halt.is_set():
                if not select.select([self._fd], [], [], 0.1)[0]:
                    continue
                data = os.read(self._fd, 1)
                if not data:  # end of input: no more keys
                    return
                key = data.decode(errors="ignore")
                if key == "\x1b" and select.select([self._fd], [], [], _ESCAPE_WAIT_S)[0]:
                    key += os.read(self._fd, 2).decode(errors="ignore")
                if key in self._keys:
                    self._post(self._keys[key])
        finally:
            self.restore()

    def restore(self) -> None:
        """Give the terminal its settings back (safe to call twice)."""
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=0.5)
        self.restore()
