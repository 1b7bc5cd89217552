"""What ``run.log`` takes as a metric value: the checks and conversions of its
slow path, and the one check of its short path that only ints pay for
(plain floats call nothing here)."""

from __future__ import annotations

import numbers
from typing import Any, Final

__all__ = ["FAST_TYPES", "FLOAT_INTS", "TENSOR_TYPES", "check_int", "coerce", "read_cpu_tensors", "small_numbers",
           "tensor_value"]

FAST_TYPES: Final = frozenset({float, int})
FLOAT_INTS: Final = 2**1023  # ints below this in magnitude convert to float; above, float() decides
TENSOR_TYPES: set[type] = set()  # torch.Tensor and subclasses, learned at first sight (no torch import)


def read_cpu_tensors(values: dict[str, Any]) -> bool:
    """Read the CPU scalar tensors among ``values`` in place (``.item()``, the
    trainer's loss) and say whether every value is then a number every tracker
    can store. False leaves the rest to ``Run.log``'s slow path, which raises
    the right error for a tensor of many elements or a bad value. Why here: a
    CPU tensor must be read at the call (the optimizer may change it in place
    later), and reading it on the short path keeps the call near a float's
    cost instead of paying the slow path's checks."""
    if not TENSOR_TYPES:
        return False
    for key, value in values.items():
        cls = type(value)
        if cls is float:
            continue
        if cls in TENSOR_TYPES and value.is_cpu:
            try:
                number = value.item()
            except (RuntimeError, ValueError):  # more than one element
                return False
            values[key] = int(number) if type(number) is bool else number
        elif cls is not int or not -FLOAT_INTS < value < FLOAT_INTS:
            return False
    return True


def small_numbers(values: Any) -> bool:
    """Whether ``values`` (a dict's values) are plain floats and ints that every
    tracker can store: an int too large for a float (``10**400``) would make
    TensorBoard and MLflow raise on its batch for ever. ``sum(values, 0.0)``
    adds in C, converting each int to a float, and raises OverflowError exactly
    when one does not fit (a float sum beyond range is ``inf``, not an error)."""
    if not FAST_TYPES.issuperset(map(type, values)):
        return False
    try:
        sum(values, 0.0)
    except OverflowError:
        return False
    return True


def check_int(key: Any, value: int) -> None:
    """Refuse an int no tracker can store: one that does not fit a float."""
    try:
        float(value)
    except OverflowError:
        digits = int(value.bit_length() * 0.30103)  # str() of such an int may itself be refused
        raise ValueError(
            f"run.log: {key!r} is an int of about 10**{digits}, beyond float range (about 1.8e308), and every "
            f"tracker stores metrics as floats; log a smaller number, such as its logarithm "
            f"(math.log10(value)) or the value in larger units"
        ) from None


def coerce(key: Any, value: Any) -> Any:
    """The slow path of ``Run.log``: a value that is not a plain int or float.
    (Keys are checked on the journal's thread, whichever path the call took.)"""
    if type(value) in TENSOR_TYPES:
        return tensor_value(key, value)
    if type(value) in FAST_TYPES:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real):  # numpy scalars register here
        if isinstance(value, numbers.Integral):
            return value
        try:
            return float(value)
        except OverflowError:  # a Fraction beyond float range
            raise ValueError(f"run.log: {key!r} = {type(value).__name__} beyond float range (about 1.8e308); "
                             f"log a smaller number") from None
    numel = getattr(value, "numel", None)
    if numel is not None and callable(numel) and hasattr(value, "device"):  # a torch tensor
        # Remembered by type, so the next tensor skips the checks above (the
        # trainer logs its loss as a tensor every time).
        TENSOR_TYPES.add(type(value))
        return tensor_value(key, value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d numpy array
        return value.item()
    raise TypeError(
        f"run.log: {key!r} has a value of type {type(value).__name__}; expected int, float, bool, "
        f"a numpy scalar or a 0-d tensor (use log_params for config values)"
    )


def tensor_value(key: str, value: Any) -> Any:
    if value.numel() != 1:
        raise TypeError(
            f"run.log: {key!r} is a tensor of shape {tuple(value.shape)}; pass a scalar "
            f"(a 0-d tensor, e.g. loss.detach()) or use run.log_histogram for many values"
        )
    if value.is_cpu:
        return value.item()
    # A device tensor is read by the journal's thread (``.item()``), so the step
    # never syncs; it is copied first (an asynchronous device copy), because the
    # optimizer or the loop may change the original in place meanwhile (a
    # logged parameter, an accumulator reset with ``zero_()``).
    return value.detach().clone()
