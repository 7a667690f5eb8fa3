"""No exception escapes a DoFn because of data: the one pattern every stage uses.

On Dataflow a DoFn that raises fails its bundle, and a streaming job retries that bundle
forever: one poisoned element stops the pipeline, and for a keyed stage every key that shares
its bundle. Beam's ``with_exception_handling`` cannot wrap stateful DoFns or timer callbacks, and
it emits ``(element, (type, repr, traceback))``, which still has to become a dead letter. So each
stage guards its own ``process`` with ``@guarded(stage, on_error)``:

- the element's outputs are collected and emitted only when it succeeds, so a failure never
  leaves half an element's outputs behind (the accounting stays exact);
- an exception becomes what ``on_error(self, element, failure)`` returns: the stage's dead
  letter (reason ``internal_error``) and one outcome per input event, which only the stage can
  build from its own element;
- the failure is counted (``internal_errors/<stage>``) and logged with the exception class and a
  scrubbed message, never with the element (it may hold personal data).

A stateful stage writes its state last (compute first), so a failure leaves the state as the
last good element left it. Timer callbacks use ``failure_of`` and the same shape by hand, because
what a failed timer should salvage (the state it was flushing) is the stage's decision.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Iterable, NamedTuple

from apache_beam.metrics import Metrics

from transforms.scrub import scrub

__all__ = ["INTERNAL_ERROR", "Failure", "failure_of", "guarded", "count_internal_error"]

_LOG = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"
MAX_MESSAGE_CHARS = 500


class Failure(NamedTuple):
    """An unexpected error on one element, as a dead letter shows it."""

    stage: str
    error_class: str
    detail: str  # "<stage>: <Class>: <scrubbed message>"


def failure_of(stage: str, error: BaseException) -> Failure:
    message = scrub(str(error))
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    name = type(error).__name__
    return Failure(stage, name, f"unexpected error in stage {stage}: {name}: {message}")


def count_internal_error(stage: str, failure: Failure) -> None:
    Metrics.counter("internal_errors", stage).inc()
    _LOG.error("%s; the element went to the dead letters and the job goes on", failure.detail)


def guarded(stage: str, on_error: Callable[[object, object, Failure], Iterable]):
    """Decorate a DoFn's ``process(self, element, ...)``; see the module docstring.

    ``functools.wraps`` keeps the signature visible, so Beam still finds the state, timer,
    window and timestamp parameters of the wrapped method."""

    def decorate(process):
        @functools.wraps(process)
        def wrapper(self, element, *args, **kwargs):
            try:
                outputs = list(process(self, element, *args, **kwargs) or ())
            except Exception as error:  # noqa: BLE001 - the point of the guard
                failure = failure_of(stage, error)
                count_internal_error(stage, failure)
                try:
                    outputs = list(on_error(self, element, failure))
                except Exception as second:  # noqa: BLE001 - the element cannot even be described
                    _LOG.error("stage %s: could not dead-letter a failed element either: %s", stage,
                               failure_of(stage, second).detail)
                    outputs = []
            return outputs

        return wrapper

    return decorate
