"""ModelLoader: pushed models load on a thread of their own, newest first, and a bad one is refused."""

from __future__ import annotations

import threading

import pytest

from dfp_ros.runtime.model_loader import ModelLoader


class Refusal(Exception):
    pass


class Recorder:
    def __init__(self) -> None:
        self.loaded: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self.threads: set[str] = set()

    def on_loaded(self, model: str, label: str) -> None:
        self.threads.add(threading.current_thread().name)
        self.loaded.append((model, label))

    def on_refused(self, label: str, reason: str) -> None:
        self.refused.append((label, reason))


def blocked_loader(seen: Recorder) -> tuple[ModelLoader, threading.Event]:
    """A loader whose first load waits for the returned event; the function returns once it has started."""
    release, started = threading.Event(), threading.Event()

    def load(src: str) -> str:
        if not started.is_set():
            started.set()
            assert release.wait(5)
        return src

    loader = ModelLoader(load, seen.on_loaded, seen.on_refused)
    loader.submit("m0", "m0")
    assert started.wait(5)
    return loader, release


def test_a_load_runs_off_the_submitting_thread_and_hands_over_the_model():
    seen = Recorder()
    loader = ModelLoader(lambda src: src.upper(), seen.on_loaded, seen.on_refused, name="probe_loader")
    loader.submit("abc", "first")
    assert loader.wait_idle(5)
    loader.close()
    assert seen.loaded == [("ABC", "first")] and seen.refused == []
    assert seen.threads == {"probe_loader"} and loader.loaded == 1


def test_requests_made_during_a_load_are_replaced_by_the_newest():
    seen = Recorder()
    loader, release = blocked_loader(seen)
    for i in range(1, 5):  # the learner pushes four more while m0 loads
        loader.submit(f"m{i}", f"m{i}")
    assert not loader.idle()
    release.set()
    assert loader.wait_idle(5)
    loader.close()
    assert [label for _, label in seen.loaded] == ["m0", "m4"]
    assert loader.superseded == 3


def test_a_refused_model_is_reported_and_the_next_one_still_loads():
    seen = Recorder()

    def load(src: str) -> str:
        if src == "bad":
            raise Refusal("state layout differs")
        if src == "broken":
            raise KeyError("input")
        return src

    loader = ModelLoader(load, seen.on_loaded, seen.on_refused, refusals=(Refusal,))
    for src in ("bad", "broken", "good"):
        loader.submit(src, src)
        assert loader.wait_idle(5)
    loader.close()
    assert seen.refused == [("bad", "state layout differs"), ("broken", "KeyError: 'input'")]
    assert seen.loaded == [("good", "good")] and (loader.loaded, loader.refused) == (1, 2)


def test_a_handover_that_raises_refuses_the_model():
    seen = Recorder()

    def on_loaded(model: str, label: str) -> None:
        raise Refusal(f"{model}: another contract")

    loader = ModelLoader(str, on_loaded, seen.on_refused, refusals=(Refusal,))
    loader.submit("m", "m")
    assert loader.wait_idle(5)
    loader.close()
    assert seen.refused == [("m", "m: another contract")] and loader.loaded == 0


def test_close_drops_a_waiting_request_hands_over_nothing_more_and_refuses_new_ones():
    seen = Recorder()
    loader, release = blocked_loader(seen)
    loader.submit("m1", "m1")
    threading.Timer(0.1, release.set).start()
    assert loader.close()  # the thread ended
    assert seen.loaded == [] and seen.refused == []  # m0 finished loading after close: not handed over
    with pytest.raises(RuntimeError, match="closed"):
        loader.submit("m2", "m2")


def test_a_push_older_than_a_swap_made_outside_is_refused_and_a_newer_one_loads():
    seen = Recorder()
    loader, release = blocked_loader(seen)  # m0 was pushed and is loading
    swapped = []
    loader.hand_over_outside(lambda: swapped.append("set as a parameter"))
    release.set()
    assert loader.wait_idle(5)
    loader.submit("m1", "m1")  # pushed after the outside swap: newer than it
    assert loader.wait_idle(5)
    loader.close()
    assert swapped == ["set as a parameter"]
    assert seen.refused == [("m0", "a model swapped in since it was submitted is newer")]
    assert seen.loaded == [("m1", "m1")]


def test_a_refusal_handler_that_raises_does_not_end_the_loader():
    seen = Recorder()

    def on_refused(description: str, reason: str) -> None:
        raise OSError("log closed")

    loader = ModelLoader(lambda src: src if src != "bad" else 1 / 0, seen.on_loaded, on_refused)
    loader.submit("bad", "bad")
    assert loader.wait_idle(5)
    loader.submit("good", "good")
    assert loader.wait_idle(5)
    loader.close()
    assert seen.loaded == [("good", "good")] and loader.handler_errors == ["bad: OSError: log closed"]
