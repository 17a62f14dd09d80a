"""Ctrl-C during training: the first one is taken between two steps, a second one at once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from agents.training.callbacks import InterruptBetweenSteps


def test_first_ctrl_c_waits_for_the_next_step_and_a_second_interrupts_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (an earlier test may have left another)
    stop = InterruptBetweenSteps()
    stop.install()
    try:
        assert stop._on_step() is True
        os.kill(os.getpid(), signal.SIGINT)  # handled here, between bytecodes: no KeyboardInterrupt yet
        assert stop.requested
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            stop._on_step()
        with pytest.raises(KeyboardInterrupt):  # the handler is the default one again
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the interrupt ends the sleep
    finally:
        stop.restore()
        signal.signal(signal.SIGINT, before)
