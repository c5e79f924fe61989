"""Process-wide settings changed for one call and put back afterwards, whatever happens inside: the logging
threshold, a logger's level, Polygraphy's verbosity and torch's intra-op thread count. A library call that needs
one of them takes it through these, so its caller's settings are as they were when it returns. Plain Python:
torch and Polygraphy load only when their context is entered."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def logging_disabled(level: int = logging.WARNING) -> Iterator[None]:
    """Records at ``level`` and below are dropped inside (``logging.disable``); the caller's threshold returns
    afterwards (e.g. to silence advice a library logs on the root logger)."""
    before = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(before)


@contextlib.contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """Logger ``name`` at ``level`` inside, at its own level afterwards."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def polygraphy_verbosity(severity: str = "ERROR") -> Iterator[None]:
    """Polygraphy's global logger at ``severity`` (a ``G_LOGGER`` level name) inside, its own level afterwards."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(getattr(G_LOGGER, severity)):
        yield


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside (None: left as they are), the caller's count after."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """A Ctrl-C inside stays a KeyboardInterrupt, even where the library called inside catches it and raises
    its own error instead (torch.onnx.export reports it as a failed export), or catches it and goes on (its
    fallback strategies): the SIGINT handler records it, and the block ends in KeyboardInterrupt after one,
    whether it raised or not. Outside the main thread, where signal handlers cannot be set, nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[bool] = []

    def on_interrupt(signum: int, frame: object) -> None:
        seen.append(True)
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    except Exception:
        if seen:
            raise KeyboardInterrupt from None
        raise
    else:
        if seen:
            raise KeyboardInterrupt
    finally:
        if before is not None:  # None: a handler not set from Python, which cannot be put back from here
            signal.signal(signal.SIGINT, before)
