"""Load pushed models on a thread of their own, newest first.

Opening an ONNX Runtime session, warming it up and running the acceptance test takes tens of
milliseconds (more for a TensorRT engine). Done in a subscription callback it holds the executor
thread, so the states that drive the control loop wait behind it. A `ModelLoader` takes the model's
bytes from the callback and does the work on its own thread; ONNX Runtime releases the GIL while it
works, so the callbacks go on meanwhile.

Only the newest request matters: a learner that pushes models faster than they load replaces the one
still waiting (counted in `superseded`), never the one being loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

S = TypeVar("S")
M = TypeVar("M")


class ModelLoader(Generic[S, M]):
    """A thread that turns each submitted source into a model with `load` and hands it to `on_loaded`.

    `load(source)` or `on_loaded` raises to refuse a model: `on_refused(label, reason)` gets the
    exception's message (its type too, for anything but `refusals`), and the thread goes on with the
    next request.
    """

    def __init__(self, load: Callable[[S], M], on_loaded: Callable[[M, str], None],
                 on_refused: Callable[[str, str], None], *, refusals: tuple[type[Exception], ...] = (),
                 name: str = "model_loader") -> None:
        self._load, self._on_loaded, self._on_refused, self._refusals = load, on_loaded, on_refused, refusals
        self._pending: tuple[S, str] | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self.superseded = 0
        self.loaded = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, source: S, label: str) -> None:
        """Load `source` next (`label` names it in the callbacks); replaces a request not started yet."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the model loader is closed")
            if self._pending is not None:
                self.superseded += 1
            self._pending = (source, label)
            self._cond.notify()

    def idle(self) -> bool:
        """Nothing waiting and nothing being loaded."""
        with self._cond:
            return self._pending is None and not self._busy

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until `idle()` (True) or `timeout` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Drop a waiting request, let a load in progress finish, and end the thread."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                (source, label), self._pending = self._pending, None
                self._busy = True
            try:
                self._handle(source, label)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _handle(self, source: S, label: str) -> None:
        try:
            self._on_loaded(self._load(source), label)
        except self._refusals as e:
            reason = str(e)
        except Exception as e:  # a model that breaks loading in an unforeseen way is refused too
            reason = f"{type(e).__name__}: {e}"
        else:
            self.loaded += 1
            return
        self.refused += 1
        self._on_refused(label, reason)
