"""The machinery shared by all checkers: a Case, calling the learner's function safely, running
the cases, and explaining the first wrong answer (input, expected, got, hint).

A checker builds a list of Cases and a check_one(case) that raises _Failure (made by _explain)
on a wrong answer; _run turns that into the printed message and True / False.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Case:
    """One input of a checker: a name learners can read, the arguments, and a hint."""

    name: str
    args: tuple
    hint: str = ""
    extra: dict = field(default_factory=dict)   # anything the explanation needs (e.g. threshold)


class _Failure(Exception):
    """Raised inside a checker with the explanation of the first wrong answer."""


class _NotImplemented(_Failure):
    """The learner's function still raises NotImplementedError."""


def _fmt(x, precision: int = 4) -> str:
    """A tensor, list or number as short readable text (numpy's printing: no 'tensor(...)')."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bool:
            return np.array2string(x.numpy(), threshold=40)
        x = x.numpy()
    if isinstance(x, np.ndarray):
        text = np.array2string(x, precision=precision, suppress_small=True, threshold=40,
                               max_line_width=100, separator=", ")
        return text.replace("\n", "\n      ")
    if isinstance(x, float):
        return f"{x:.{precision}g}"
    return repr(x)


def _fmt_input(name: str, value) -> str:
    shape = f"   (shape {tuple(value.shape)})" if isinstance(value, torch.Tensor) else ""
    return f"    {name} = {_fmt(value)}{shape}"


def _clone(args: tuple) -> tuple:
    """Fresh copies, so a learner's in-place edit cannot change the reference's input."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _as_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except Exception:
        raise _Failure(f"  It returned {type(value).__name__} {value!r}, not {what}.\n"
                       f"  Hint: return a torch tensor ({what}).") from None


def _call(fn: Callable, case: Case, arg_names: tuple):
    """The learner's answer for one case; exceptions become explanations."""
    try:
        return fn(*_clone(case.args))
    except NotImplementedError:
        raise _NotImplemented(f"NOT DONE YET: {_name(fn)} is not implemented yet: replace `raise NotImplementedError` "
                       f"with your code, run its cell, then run this check again.") from None
    except Exception as error:
        frame = _learner_frame(error)
        inputs = "\n".join(_fmt_input(n, v) for n, v in zip(arg_names, case.args))
        raise _Failure(
            f"  {_name(fn)} raised {type(error).__name__}: {error}\n"
            f"  (line {frame.lineno}: {frame.line})\n"
            f"  on the input \"{case.name}\":\n{inputs}\n"
            + (f"  Hint: {case.hint}" if case.hint else "")) from None


def _learner_frame(error: Exception):
    """The innermost frame of the traceback that is not inside torch or numpy."""
    frames = traceback.extract_tb(error.__traceback__)[1:]      # [0] is _call itself
    for frame in reversed(frames):
        if "site-packages" not in frame.filename and "/torch/" not in frame.filename:
            return frame
    return frames[-1] if frames else traceback.extract_tb(error.__traceback__)[-1]


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", "your function")


def _explain(fn: Callable, case: Case, arg_names: tuple, expected: str, got: str, detail: str = "",
             hint: str = "") -> _Failure:
    inputs = "\n".join(_fmt_input(n, v) for n, v in zip(arg_names, case.args))
    lines = [f"  Input \"{case.name}\":", inputs,
             f"  expected: {expected}",
             f"  got:      {got}"]
    if detail:
        lines.append(f"  {detail}")
    hint = hint or case.hint
    if hint:
        lines.append(f"  Hint: {hint}")
    return _Failure("\n".join(lines))


def _run(fn: Callable, task: str, cases: list, check_one: Callable) -> bool:
    """Run check_one(case) for each case; print the first failure or a success message."""
    if not callable(fn):
        print(f"FAILED: check_{task} needs a function, got {type(fn).__name__} {fn!r}.")
        return False
    for number, case in enumerate(cases, 1):
        try:
            check_one(case)
        except _NotImplemented as failure:
            print(failure)
            return False
        except _Failure as failure:
            print(f"FAILED: {_name(fn)} is not right yet (check {number} of {len(cases)}, "
                  f"\"{case.name}\").\n{failure}")
            return False
    print(f"PASSED: {_name(fn)} agrees with the reference on all {len(cases)} checks "
          f"(hand-picked edge cases and random inputs). Well done!")
    return True


def _check_shape(fn, case, arg_names, got: torch.Tensor, expected: torch.Tensor, what: str):
    if tuple(got.shape) != tuple(expected.shape):
        raise _explain(fn, case, arg_names, f"{what} of shape {tuple(expected.shape)}",
                       f"shape {tuple(got.shape)}: {_fmt(got)}")


def _first_mismatch(got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float):
    """Index tuple of the first element where got and expected differ (NaN counts), or None."""
    got, expected = got.double(), expected.double()
    close = torch.isclose(got, expected, rtol=rtol, atol=atol)
    if bool(close.all()):
        return None
    return tuple(int(i) for i in (~close).nonzero()[0])


def _matches(wrong: Callable, case: Case, got: torch.Tensor, atol: float = 1e-4) -> bool:
    """Does the learner's answer equal the answer of a known mistake?"""
    try:
        answer = torch.as_tensor(wrong(*_clone(case.args))).double()
    except Exception:
        return False
    return answer.shape == got.shape and bool(torch.allclose(answer, got.double(), atol=atol,
                                                             rtol=1e-4, equal_nan=True))


def _diagnose(mistakes: list, case: Case, got: torch.Tensor) -> str:
    for wrong, hint in mistakes:
        if _matches(wrong, case, got):
            return hint
    return ""


def _boxes(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype).reshape(-1, 4)


def _random_boxes(n: int, generator: torch.Generator, size: float = 100.0, min_side: float = 2.0
                  ) -> torch.Tensor:
    """n random boxes inside [0, size]^2 with sides >= min_side, float32, whole and half pixels."""
    xy = torch.rand(n, 2, generator=generator) * size * 0.7
    wh = min_side + torch.rand(n, 2, generator=generator) * size * 0.3
    return (torch.round(torch.cat([xy, xy + wh], dim=1) * 2) / 2).float()
