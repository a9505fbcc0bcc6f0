"""Exceptions that automtl raises for bad input; each message names its culprit."""

from __future__ import annotations

__all__ = [
    "AutoMTLError",
    "BaselineError",
    "BundleError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "NonFiniteLossError",
    "ParityError",
    "RegistryError",
    "StorageError",
    "UntrustedCodeError",
]


class AutoMTLError(Exception):
    """Base class of every error automtl raises on purpose."""


class ConfigError(AutoMTLError, ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    Args:
        key: Dotted path of the offending key, e.g. ``"search.max_groups"``.
        message: What is wrong with it.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class DataError(AutoMTLError, ValueError):
    """A data set is absent or malformed (missing column, bad label, ...)."""


class RegistryError(AutoMTLError, KeyError):
    """A name that no registry knows, or a ``module:function`` path that does not import."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UntrustedCodeError(RegistryError):
    """A ``module:function`` import path met where code execution was not allowed.

    Importing a module runs its code, so a registry resolves such a path only when the caller
    passes ``trust_code=True`` (the command line's ``--trust-code``).

    Args:
        kind: What the registry holds (``"backbone"``).
        name: The refused import path.
    """

    #: How the message names the way to allow it; the command line swaps in its flag.
    HINT = "trust_code=True"

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        super().__init__(
            f"{kind} '{name}' is a 'module:function' import path, not a registered {kind}; importing it would run "
            f"that module's code, which is refused unless you trust its source and pass {self.HINT}"
        )


class BundleError(AutoMTLError, ValueError):
    """An exported bundle is malformed, of an unknown format version, or does not fit together;
    the message names the file (and the key or tensor)."""


class ParityError(AutoMTLError, ValueError):
    """An exported model (ONNX, ``torch.export``) disagrees with the eager network beyond the tolerance."""


class NonFiniteLossError(AutoMTLError, FloatingPointError):
    """A task loss became NaN or infinite during training.

    Args:
        task: The task whose loss is not finite.
        epoch: Epoch index (0-based).
        step: Optimizer step index within the epoch (0-based).
        value: The offending loss value.
    """

    def __init__(self, task: str, epoch: int, step: int, value: float) -> None:
        self.task, self.epoch, self.step, self.value = task, epoch, step, value
        super().__init__(f"loss of task '{task}' is {value} at epoch {epoch}, step {step}")


class StorageError(AutoMTLError, ValueError):
    """A study storage URL is malformed, unsupported, unreachable, or names a missing file."""


class BaselineError(AutoMTLError):
    """A single-task baseline is no better than a trivial predictor (the message names the task
    and both numbers), so Δm against it would mean nothing."""


class DivergenceError(NonFiniteLossError):
    """Training diverged although every loss is still finite (the rule is in :func:`automtl.train.fit`).

    A subclass of :class:`NonFiniteLossError`, so that whatever catches a NaN loss (a search
    records the trial as failed and goes on) catches a divergence too.

    Args:
        task: The task that diverged.
        epoch: Epoch index (0-based).
        step: Optimizer steps taken so far (the global step count at the epoch's end).
        value: The offending value: the epoch's mean training loss, or a non-finite
            validation output or metric.
        reason: What diverged, in words (with both losses, for the loss rule).
    """

    def __init__(self, task: str, epoch: int, step: int, value: float, reason: str) -> None:
        super().__init__(task, epoch, step, value)
        self.reason = reason
        self.args = (f"training diverged: task '{task}', epoch {epoch} (0-based): {reason}",)
