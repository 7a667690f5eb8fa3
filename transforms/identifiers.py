"""Which Braze user an Amplitude event belongs to, per the sync's identifier mapping."""
from __future__ import annotations

from typing import Optional, Tuple

from transforms.model import Identifier

_MISSING = object()


def _lookup(event: dict, path: Tuple[str, ...]):
    value = event
    for part in path:
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


class IdentifierMapper:
    """Builds the identifier fields of a Braze object from an event.

    Exactly one primary identifier per object (Braze rejects more than one). A missing, empty
    or non-scalar value means the event cannot be sent for this sync: the caller skips it by
    rule and counts it, as Amplitude's docs advise ("filter out events without an identifier").
    """

    def __init__(self, identifier: Identifier, update_existing_only: bool):
        self.type = identifier.type
        self._path = tuple(identifier.source.split("."))
        self._label = identifier.alias_label
        # Braze: `true` never creates a user; absent creates one for external_id; an alias-only
        # user is created only with an explicit `false` (docs/api-facts.md, B4).
        if update_existing_only:
            self.update_flag: Optional[bool] = True
        elif identifier.type == "user_alias":
            self.update_flag = False
        else:
            self.update_flag = None

    def user_key(self, event: dict) -> Optional[str]:
        value = _lookup(event, self._path)
        if isinstance(value, bool) or value is _MISSING or value is None:
            return None
        if isinstance(value, (int, float)):
            value = str(value)
        if not isinstance(value, str) or value == "":
            return None
        return value

    def fields(self, user_key: str) -> dict:
        """The identifier part of an object, plus ``_update_existing_only`` when it must be sent."""
        if self.type == "user_alias":
            fields = {"user_alias": {"alias_name": user_key, "alias_label": self._label}}
        else:
            fields = {self.type: user_key}
        if self.update_flag is not None:
            fields["_update_existing_only"] = self.update_flag
        return fields
