"""The recorder's episode state machine (ROS-free): services, keys and `/episode` events in,
the dataset writer operations they imply out."""

from __future__ import annotations

from dfp_ros.contracts import EPISODE_DISCARD

IDLE, RECORDING, STOPPED = "idle", "recording", "stopped"


class EpisodeControl:
    """idle -> recording (start) -> idle (save | discard) ...; stop ends everything.

    Returns the writer operations each request implies ("start", "save", "discard"), so the node
    can run them in order; a request that makes no sense in the current state returns [] and a reason.
    """

    def __init__(self) -> None:
        self.state = IDLE

    def request(self, what: str) -> tuple[list[str], str]:
        if self.state == STOPPED:
            return [], "recording has stopped"
        if what == "start":
            if self.state == RECORDING:
                return [], "an episode is already being recorded (save or discard it first)"
            self.state = RECORDING
            return ["start"], "episode started"
        if what in ("save", "discard"):
            if self.state != RECORDING:
                return [], f"no episode is being recorded (nothing to {what})"
            self.state = IDLE
            return [what], f"episode {what}d" if what == "save" else "episode discarded"
        if what == "next":  # keyboard: keep this one, go on with the next
            ops = ["save"] if self.state == RECORDING else []
            self.state = RECORDING
            return [*ops, "start"], "next episode"
        if what == "rerecord":  # keyboard: throw this one away and record it again
            ops = ["discard"] if self.state == RECORDING else []
            self.state = RECORDING
            return [*ops, "start"], "re-recording the episode"
        if what in ("stop_save", "stop_discard"):
            ops = ([what.removeprefix("stop_")] if self.state == RECORDING else [])
            self.state = STOPPED
            return ops, "stopped"
        raise ValueError(f"unknown episode request {what!r}")

    def on_event(self, event: str, auto: bool) -> tuple[list[str], str]:
        """An `/episode` event from the robot or simulator (only acted on when `auto`), or the operator's
        `discard` (a button: always acted on, like the re-record key: the episode is thrown away and
        recorded again; a `start` that follows restarts that recording)."""
        if event == EPISODE_DISCARD:
            if self.state != RECORDING:
                return [], "no episode is being recorded (nothing to discard)"
            return self.request("rerecord")
        if not auto:
            return [], "automatic episodes are off"
        if event == "start":
            if self.state == RECORDING:  # the previous end was missed: its frames are not trusted
                ops, _ = self.request("discard")
                more, _ = self.request("start")
                return ops + more, "episode restarted (no end event seen for the previous one)"
            return self.request("start")
        if event in ("success", "failure", "timeout"):
            return self.request("save")
        if event == "reset" and self.state == RECORDING:  # reset without an end: not a complete episode
            return self.request("discard")
        return [], f"event {event!r} needs nothing"
