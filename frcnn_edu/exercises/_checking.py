"""The machinery shared by all checkers: a Case, calling the learner's function safely, running
the cases, explaining the first wrong answer (input, expected, got, hint), noticing a function
that only calls the package's own answer, and the CheckResult a checker returns.

A checker builds a list of Cases, a _Watch over the functions that ARE the answer, and a
check_one(case) that raises _Failure (made by _explain) on a wrong answer; _run turns that into
the explanation and a CheckResult, printed (learning mode) or raised (grading mode).
"""
from __future__ import annotations

import functools
import html
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import torch


@dataclass
class Case:
    """One input of a checker: a name learners can read, the arguments, and a hint."""

    name: str
    args: tuple
    hint: str = ""
    extra: dict = field(default_factory=dict)   # anything the explanation needs (e.g. threshold)


@dataclass(frozen=True)
class CheckResult:
    """What a checker found. A notebook cell shows its one-line `verdict` (instead of True / False).

    passed:       did every check pass (and, in grading mode, without calling the answer)?
    message:      the explanation, as printed in learning mode (and raised in grading mode);
    verdict:      one line, e.g. "✓ check_iou: all 10 checks pass";
    delegated_to: the package functions that ARE the answer and that the learner's function called.

    bool(result) is result.passed, so `assert check_iou(my_iou)` and `if check_iou(my_iou):` work.
    """

    passed: bool
    message: str
    verdict: str
    delegated_to: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return self.verdict

    def _repr_html_(self) -> str:
        colour = "green" if self.passed else "firebrick"
        return f'<span style="color: {colour}; font-family: monospace">{html.escape(self.verdict)}</span>'


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


def _call(fn: Callable, case: Case, arg_names: tuple, watch: _Watch):
    """The learner's answer for one case, with `watch` noting calls to the answer; exceptions
    become explanations."""
    try:
        with watch.running():
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


def _run(fn: Callable, task: str, cases: list, check_one: Callable, watch: _Watch,
         raise_on_failure: bool = False) -> CheckResult:
    """Run check_one(case) for each case and report the first failure, or success.

    Learning mode (raise_on_failure=False) prints the explanation; a function that calls the
    answer only gets a note. Grading mode prints nothing, raises AssertionError(explanation) on a
    failure, and fails a function that calls the answer.
    """
    if not callable(fn):
        return _report(task, False, f"FAILED: check_{task} needs a function, got {type(fn).__name__} {fn!r}.",
                       f"needs a function, got {type(fn).__name__}", watch, raise_on_failure)
    for number, case in enumerate(cases, 1):
        failure = None
        try:
            check_one(case)
        except _NotImplemented as error:
            return _report(task, False, str(error), f"{_name(fn)} is not implemented yet", watch,
                           raise_on_failure)
        except _Failure as error:
            failure = error
        if raise_on_failure and watch.called:          # grading mode: calling the answer fails
            return _report(task, False, watch.failure(number, len(cases), case),
                           f"your function calls {watch.called[0]}", watch, raise_on_failure)
        if failure is not None:
            return _report(task, False,
                           f"FAILED: {_name(fn)} is not right yet (check {number} of {len(cases)}, "
                           f"\"{case.name}\").\n{failure}",
                           f"check {number} of {len(cases)} (\"{case.name}\") differs", watch,
                           raise_on_failure)
    return _report(task, True,
                   f"PASSED: {_name(fn)} agrees with the reference on all {len(cases)} checks "
                   f"(hand-picked edge cases and random inputs). Well done!",
                   f"all {len(cases)} checks pass", watch, raise_on_failure)


def _report(task: str, passed: bool, message: str, verdict: str, watch: _Watch,
            raise_on_failure: bool) -> CheckResult:
    """Print (learning mode) or raise (grading mode, failures only) the explanation."""
    if raise_on_failure:
        if not passed:
            raise AssertionError(message)
    else:
        message += watch.note()
        if watch.called:
            verdict += f" (but your function calls {watch.called[0]})"
        if not passed or watch.called:
            verdict += " \u2014 see above"              # an em dash: the printed explanation
        print(message)
    mark = "\u2713" if passed else "\u2717"               # a check mark or a ballot x
    return CheckResult(passed, message, f"{mark} check_{task}: {verdict}", tuple(watch.called))


# ----------------------------------------------------------------------------------------------
# Noticing a function that only calls the package's own answer
# ----------------------------------------------------------------------------------------------
_WATCHED_PACKAGES = ("frcnn_edu", "torchvision")


class _Watch:
    """Notices when the learner's function calls the functions that ARE the exercise's answer.

    answer: dotted names of those functions, e.g. ("frcnn_edu.boxes.box_iou", ...): what the
        exercise asks the learner to write, not the helpers it allows. While the learner's function
        runs (`with watch.running():`), each one is replaced, wherever a frcnn_edu or torchvision
        module or the learner's own module holds it (under any name), by a wrapper that records
        the call and then calls the original, so the answer is still checked. `called` lists the
        names called, first call first. (Where they are held is looked up once per checker call:
        scanning the modules again for every case made checking about 25 times slower.)
    """

    def __init__(self, fn: Callable, answer: tuple[str, ...]):
        self.called: list[str] = []
        originals = {name: obj for name in answer if (obj := _resolve(name)) is not None}
        self._wrappers = {name: self._recorder(name, obj) for name, obj in originals.items()}
        name_of = {id(obj): name for name, obj in originals.items()}
        # The learner passed the answer itself (or functools.partial(answer, ...)).
        self._fn_is = [name_of[id(f)] for f in (fn, getattr(fn, "func", None)) if id(f) in name_of]
        self._in_modules = _holders(name_of)
        # `from frcnn_edu.boxes import box_iou` in the learner's notebook or module
        self._learner_globals = getattr(fn, "__globals__", {})
        self._in_learner_globals = [(key, name_of[id(value)]) for key, value in self._learner_globals.items()
                                    if id(value) in name_of]

    def _record(self, name: str):
        if name not in self.called:
            self.called.append(name)

    def _recorder(self, name: str, original: Callable) -> Callable:
        @functools.wraps(original)
        def recorded(*args, **kwargs):
            self._record(name)
            return original(*args, **kwargs)
        return recorded

    @contextmanager
    def running(self) -> Iterator[None]:
        for name in self._fn_is:
            self._record(name)
        with ExitStack() as stack:
            for module, attribute, name in self._in_modules:
                stack.enter_context(mock.patch.object(module, attribute, self._wrappers[name]))
            for key, name in self._in_learner_globals:
                stack.enter_context(_replaced(self._learner_globals, key, self._wrappers[name]))
            yield

    def note(self) -> str:
        """Learning mode: a note to add to the explanation ("" if the answer was not called)."""
        if not self.called:
            return ""
        return (f"\nNote: your function calls {self.called[0]}, the function this exercise asks you "
                f"to write. That is fine while exploring, but in grading mode "
                f"(raise_on_failure=True) it does not count as a solution.")

    def failure(self, number: int, total: int, case: Case) -> str:
        """Grading mode: the explanation of a function that calls the answer."""
        return (f"FAILED: your function calls {self.called[0]}, the function this exercise asks you "
                f"to write (check {number} of {total}, \"{case.name}\").\n"
                f"  Hint: compute the answer with your own code; the exercise says which package "
                f"functions you may use.")


def _resolve(dotted: str):
    """The object a dotted name such as "frcnn_edu.boxes.box_iou" names, or None if its module
    is not imported."""
    module_name, _, attribute = dotted.rpartition(".")
    module = sys.modules.get(module_name)
    return None if module is None else getattr(module, attribute, None)


def _holders(name_of: dict) -> list:
    """(module, attribute, name) for every attribute of an imported frcnn_edu or torchvision
    module that holds one of the objects in name_of = {id(object): its dotted name}."""
    found = []
    for module_name, module in list(sys.modules.items()):
        if module_name.partition(".")[0] in _WATCHED_PACKAGES:
            for attribute, value in list(getattr(module, "__dict__", {}).items()):
                if id(value) in name_of:
                    found.append((module, attribute, name_of[id(value)]))
    return found


@contextmanager
def _replaced(namespace: dict, key: str, value) -> Iterator[None]:
    """namespace[key] = value for the duration (one key; mock.patch.dict would restore them all)."""
    original = namespace[key]
    namespace[key] = value
    try:
        yield
    finally:
        namespace[key] = original


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
