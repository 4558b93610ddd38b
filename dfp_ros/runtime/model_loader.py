"""Load pushed models on a thread of their own, newest first.

Opening an ONNX Runtime session, warming it up and running the acceptance test takes tens of
milliseconds (more for a TensorRT engine). Done in a subscription callback it holds the executor
thread, so the states that drive the control loop wait behind it. A `ModelLoader` takes the model's
bytes from the callback and does the work on its own thread; ONNX Runtime releases the GIL while it
works, so the callbacks go on meanwhile.

Only the newest model matters: a learner that pushes models faster than they load replaces the one
still waiting (counted in `superseded`), never the one being loaded; and a model swapped in some other
way (`hand_over_outside`: a node's `model_path` parameter) makes every request submitted before it
stale, refused when its load ends instead of replacing the newer model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

S = TypeVar("S")
M = TypeVar("M")


class ModelLoader(Generic[S, M]):
    """A thread that turns each submitted source into a model with `load` and hands it to `on_loaded`.

    `load(source)` or `on_loaded` raises to refuse a model: `on_refused(description, reason)` gets the
    exception's message (its type too, for anything but `refusals`), and the thread goes on with the
    next request. After `close()` nothing more is handed over.
    """

    def __init__(self, load: Callable[[S], M], on_loaded: Callable[[M, str], None],
                 on_refused: Callable[[str, str], None], *, refusals: tuple[type[Exception], ...] = (),
                 name: str = "model_loader") -> None:
        self._load, self._on_loaded, self._on_refused, self._refusals = load, on_loaded, on_refused, refusals
        self._pending: tuple[S, str, int] | None = None
        self._generation = 0  # swaps made outside the loader so far
        self._handover = threading.Lock()  # a hand-over and a swap made outside never interleave
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self.superseded = 0
        self.loaded = 0
        self.refused = 0
        self.handler_errors: list[str] = []  # an `on_refused` that raised: kept, so the thread lives on
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, source: S, description: str) -> None:
        """Load `source` next (`description` names it in the callbacks); replaces a request not started yet.

        Raises RuntimeError once the loader is closed."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the model loader is closed")
            if self._pending is not None:
                self.superseded += 1
            self._pending = (source, description, self._generation)
            self._cond.notify_all()

    def hand_over_outside(self, swap: Callable[[], None]) -> None:
        """Run a swap made outside the loader; the requests submitted before it become stale."""
        with self._handover:
            with self._cond:
                self._generation += 1
            swap()

    def idle(self) -> bool:
        """Nothing waiting and nothing being loaded."""
        with self._cond:
            return self._pending is None and not self._busy

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until `idle()` (True) or `timeout` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Drop a waiting request, let a load in progress finish unhanded, and end the thread.

        Returns False when the thread is still inside a load after `timeout` seconds."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                (source, description, generation), self._pending = self._pending, None
                self._busy = True
            try:
                self._handle(source, description, generation)
            except Exception as e:  # from on_refused: the loader must outlive it
                self.handler_errors.append(f"{description}: {type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _handle(self, source: S, description: str, generation: int) -> None:
        try:
            model = self._load(source)
            with self._handover:
                if self._is_closed():
                    return
                if generation != self._current_generation():
                    raise StaleRequest("a model swapped in since it was submitted is newer")
                self._on_loaded(model, description)
        except (StaleRequest, *self._refusals) as e:
            reason = str(e)
        except Exception as e:  # a model that breaks loading in an unforeseen way is refused too
            reason = f"{type(e).__name__}: {e}"
        else:
            self.loaded += 1
            return
        if not self._is_closed():
            self.refused += 1
            self._on_refused(description, reason)

    def _is_closed(self) -> bool:
        with self._cond:
            return self._closed

    def _current_generation(self) -> int:
        with self._cond:
            return self._generation


class StaleRequest(Exception):
    """A loaded model older than the one running (swapped in outside the loader meanwhile)."""
