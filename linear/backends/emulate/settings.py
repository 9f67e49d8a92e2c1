"""The emulate runtime's settings: how each launch of its kernels runs.

The runtime resolves them once (its constructor's arguments, else the LINEAR_EMU_* environment variables,
else the defaults; runtime.py lists them) and hands the frozen result to every kernel it loads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from . import sanitizers

# The block and thread orders, as the runtime library numbers them (kernels/emu/emu_runtime.h).
SCHEDULES = {"forward": 0, "reverse": 1, "shuffle": 2}


@dataclass(frozen=True)
class EmulatorSettings:
    schedule: str = "forward"        # one of SCHEDULES: the order of the blocks, and of a block's threads
    seed: int = 0                    # of the shuffle schedule
    strict: bool = True              # False allows a barrier that completes only because threads exited
    check_bounds: bool = True        # guarded copies of the array arguments (out-of-bounds accesses fault)
    timeout_s: float = 300.0         # a launch still running after this long is stopped as hung; 0: never
    sanitize: frozenset[str] = frozenset()  # sanitizer modes (sanitizers.MODES)

    @classmethod
    def resolve(cls, *, schedule: str | None = None, seed: int | None = None, strict: bool | None = None,
                check_bounds: bool | None = None, timeout_s: float | None = None,
                sanitize: str | None = None) -> "EmulatorSettings":
        """Each setting from its argument when not None, else from its LINEAR_EMU_* variable when set,
        else the default; a bad value is a ValueError naming the argument or the variable."""
        default = cls()
        return cls(
            schedule=_setting(schedule, "schedule", "LINEAR_EMU_SCHEDULE", default.schedule, _schedule),
            seed=_setting(seed, "seed", "LINEAR_EMU_SEED", default.seed, _seed),
            strict=_setting(strict, "strict", "LINEAR_EMU_STRICT", default.strict, _switch),
            check_bounds=_setting(check_bounds, "check_bounds", "LINEAR_EMU_CHECK_BOUNDS", default.check_bounds,
                                  _switch),
            timeout_s=_setting(timeout_s, "timeout_s", "LINEAR_EMU_TIMEOUT", default.timeout_s, _seconds),
            sanitize=_setting(sanitize, "sanitize", "LINEAR_EMU_SANITIZE", default.sanitize, sanitizers.parse))


def _setting(argument: Any, name: str, variable: str, default: Any, parse: Callable[[Any], Any]) -> Any:
    """The constructor argument `name`, else $variable, else the default; a bad value says which it was."""
    if argument is not None:
        source, value = name, argument
    elif os.environ.get(variable):
        source, value = f"${variable}", os.environ[variable]
    else:
        return default
    try:
        return parse(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from None


def _schedule(value: Any) -> str:
    if value not in SCHEDULES:
        raise ValueError(f"must be one of {sorted(SCHEDULES)}, got {value!r}")
    return value


def _seed(value: Any) -> int:
    if int(value) != float(value) or not 0 <= int(value) < 2**64:
        raise ValueError(f"must be an integer in [0, 2**64), got {value!r}")
    return int(value)


def _switch(value: Any) -> bool:
    return value != "0" if isinstance(value, str) else bool(value)


def _seconds(value: Any) -> float:
    if not float(value) >= 0:
        raise ValueError(f"must be a number of seconds >= 0 (0: never), got {value!r}")
    return float(value)
