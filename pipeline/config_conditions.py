"""The syncs file's event filters: ``events.select`` entries and their ``where`` conditions.

The validator rules for them (``SelectRules``, mixed into the syncs file's validator), so that
``pipeline.config`` stays readable; the model (``Condition``, ``EventSelector``,
``OPERATORS``) is ``transforms.model``, and ``pipeline.config`` re-exports every public name.
What the operators mean when an event is matched is ``transforms.filters``.
"""
from __future__ import annotations

from pipeline.config_validation import (
    DOTTED_PATH_RE, DOTTED_PATH_TEXT, choice_hint, is_number, is_scalar, join_path, type_name,
)
from transforms.model import OPERATORS, Condition, EventSelector

__all__ = ["OPERATORS", "OPERATOR_ALIASES", "NO_VALUE_OPERATORS", "EQUALITY_OPERATORS", "STRING_OPERATORS",
           "NUMBER_OPERATORS", "Condition", "EventSelector", "SelectRules"]

# Other spellings of an operator that "did you mean" should recognise.
OPERATOR_ALIASES = {
    "gt": "greater_than", ">": "greater_than", "gte": "greater_or_equal", "ge": "greater_or_equal",
    ">=": "greater_or_equal", "lt": "less_than", "<": "less_than", "lte": "less_or_equal", "le": "less_or_equal",
    "<=": "less_or_equal", "eq": "is", "equals": "is", "=": "is", "==": "is", "ne": "is_not", "neq": "is_not",
    "!=": "is_not", "not_equals": "is_not", "exists": "is_set", "not_exists": "is_not_set",
    "in": "is", "not_in": "is_not", "not_contains": "does_not_contain", "begins_with": "starts_with",
    "is_null": "is_not_set", "null": "is_not_set", "not_null": "is_set", "is_not_null": "is_set",
}


# Operators by the value they take.
NO_VALUE_OPERATORS = ("is_set", "is_not_set")
EQUALITY_OPERATORS = ("is", "is_not")  # a scalar or a non-empty list of scalars
STRING_OPERATORS = ("contains", "does_not_contain", "starts_with")  # a non-empty string
NUMBER_OPERATORS = ("greater_than", "greater_or_equal", "less_than", "less_or_equal")  # a number

SELECTOR_KEYS = ("event_type", "where")
CONDITION_KEYS = ("property", "op", "value")


class SelectRules:
    """The ``events.select`` checks, mixed into the syncs file's validator (which provides
    ``add``, ``mapping`` and ``string``)."""

    def select(self, em, path, enabled):
        p = join_path(path, "select")
        if "select" not in em:
            if enabled:
                self.add(p, "required when events are enabled (list the events to send, or event_type '*')")
            return ()
        value = em["select"]
        if not isinstance(value, list):
            self.add(p, f"must be a list of event selectors, got {type_name(value)}")
            return ()
        if not value and enabled:
            self.add(p, "must not be empty when events are enabled (list the events to send, or event_type '*')")
        return tuple(s for s in (self.selector(item, f"{p}[{i}]") for i, item in enumerate(value)) if s)

    def selector(self, value, path):
        sm = self.mapping(value, path, SELECTOR_KEYS, required=("event_type",))
        if sm is None:
            return None
        event_type = self.string(sm, "event_type", path)
        where = ()
        if "where" in sm:
            wp = join_path(path, "where")
            value = sm["where"]
            if not isinstance(value, list):
                self.add(wp, f"must be a list of conditions, got {type_name(value)}")
                return None
            where = tuple(self.condition(item, f"{wp}[{i}]") for i, item in enumerate(value))
            if None in where:
                return None
        return EventSelector(event_type=event_type, where=where) if event_type is not None else None

    def condition(self, value, path):
        cm = self.mapping(value, path, CONDITION_KEYS, required=("property", "op"))
        if cm is None:
            return None
        n = len(self.problems)
        prop = self.string(cm, "property", path, pattern=DOTTED_PATH_RE, pattern_text=DOTTED_PATH_TEXT)
        op = cm.get("op")
        vp = join_path(path, "value")
        cond_value = None
        if "op" not in cm:
            pass
        elif not isinstance(op, str):
            self.add(join_path(path, "op"), f"must be a string, got {type_name(op)}")
        elif op not in OPERATORS:
            self.add(join_path(path, "op"), f"unknown operator {op!r} ({choice_hint(op, OPERATORS, OPERATOR_ALIASES)})")
        elif op in NO_VALUE_OPERATORS:
            if "value" in cm:
                self.add(vp, f"not allowed with {op}")
        elif "value" not in cm:
            self.add(vp, f"required with {op}")
        else:
            raw = cm["value"]
            if op in EQUALITY_OPERATORS:
                if isinstance(raw, list):
                    if not raw:
                        self.add(vp, "must not be an empty list")
                    for i, item in enumerate(raw):
                        if not is_scalar(item):
                            self.add(f"{vp}[{i}]", _scalar_message(item))
                    cond_value = tuple(raw)
                elif not is_scalar(raw):
                    self.add(vp, _scalar_message(raw, list_allowed=True))
                else:
                    cond_value = raw
            elif op in STRING_OPERATORS:
                if not isinstance(raw, str):
                    self.add(vp, f"must be a string with {op}, got {type_name(raw)}")
                elif not raw:
                    self.add(vp, "must not be empty")
                else:
                    cond_value = raw
            elif not is_number(raw):  # NUMBER_OPERATORS
                got = "a non-finite number" if isinstance(raw, float) else type_name(raw)
                self.add(vp, f"must be a number with {op}, got {got}")
            else:
                cond_value = raw
        if len(self.problems) != n:
            return None
        return Condition(property=prop, op=op, value=cond_value)


def _scalar_message(value, list_allowed=False) -> str:
    allowed = "a string, number or boolean" + (" (or a list of them)" if list_allowed else "")
    hint = "; use is_set / is_not_set to test for presence" if value is None else ""
    got = "a non-finite number" if isinstance(value, float) else type_name(value)
    return f"must be {allowed}, got {got}{hint}"
