"""The one exception of the emulate runtime."""
from __future__ import annotations


class EmulationError(RuntimeError):
    """A kernel did something CUDA leaves undefined, faulted or hung, or failed to compile."""

    def __init__(self, message: str, *, kernel: str | None = None,
                 block: tuple[int, int, int] | None = None, thread: tuple[int, int, int] | None = None):
        where = "".join([f"{kernel}: " if kernel else "", f"block {block}" if block else "",
                         f", thread {thread}" if thread else "", ": " if block else ""])
        super().__init__(where + message)
        self.kernel, self.block, self.thread = kernel, block, thread
