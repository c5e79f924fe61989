"""scoped.interrupts_kept: a Ctrl-C that a library turns into its own error still ends the command as Ctrl-C."""

from __future__ import annotations

import os
import signal
import time

import pytest

from fastast_deploy.scoped import interrupts_kept


@pytest.fixture(autouse=True)
def sigint_delivered():
    """SIGINT unblocked and at Python's handler, as in a command started from a shell, whatever the test process
    inherited; put back afterwards."""
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, handler if handler is not None else signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _library_that_reports_interrupts_as_failures() -> None:
    """As torch.onnx.export does: whatever stops it becomes its own error."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs here
    except BaseException as err:  # noqa: BLE001 - the point of the stand-in
        raise RuntimeError("export failed") from err


def test_a_ctrl_c_turned_into_an_error_stays_a_ctrl_c() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupts_kept():
        _library_that_reports_interrupts_as_failures()
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_a_ctrl_c_swallowed_inside_still_ends_the_block() -> None:
    def library_that_goes_on() -> None:  # as an exporter that falls back to another strategy after any error
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except BaseException:  # noqa: BLE001 - the point of the stand-in
            pass

    with pytest.raises(KeyboardInterrupt), interrupts_kept():
        library_that_goes_on()


def test_errors_without_a_ctrl_c_pass_unchanged() -> None:
    with pytest.raises(RuntimeError, match="plain failure"), interrupts_kept():
        raise RuntimeError("plain failure")
    with pytest.raises(RuntimeError, match="export failed"):  # without the guard: the library's error
        _library_that_reports_interrupts_as_failures()
