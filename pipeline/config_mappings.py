"""The syncs file's rules for Braze field names and ``mappings`` entries.

``users.mappings`` and ``events.mappings`` send an Amplitude field under a Braze name
(``{from: user_properties.Email Address, to: email}``); ``properties: [...]`` are the same
thing with the name kept. So one set of rules applies to both, here:

- ``from`` is a dotted path whose first part is a field Amplitude sends (either event shape,
  docs/api-facts.md, A1-A3); ``user_properties`` and ``event_properties`` need a
  property after them. A bare name that is not an event field (``plan``) is almost always a
  user property: the message says ``user_properties.plan``.
- ``to`` (an attribute) is never a Braze identifier or control field: those are set by the
  sync itself (``identifier``, ``update_existing_only``), and a property named so would
  retarget or reconfigure the object (issue 12). ``users.properties`` obey the same rule.
  ``push_tokens`` and ``subscription_groups`` take structures this job does not build.
- ``to`` (an event property) is never a field of the event object itself, nor a key Braze
  reserves inside ``properties`` (``time``, ``event_name``; for purchases ``product_id``,
  ``currency``, ``price``, ``quantity``; docs/api-facts.md, B5).
- Braze refuses ``$``-prefixed names (B5, B9) and knows its standard attributes only in
  lower case (B8, B9): ``to: Email`` is refused with "did you mean 'email'?".
- One Braze field takes one source: two mappings, or a mapping and a plain property, to the
  same name are refused.
"""
from __future__ import annotations

import difflib
from typing import Dict, Optional, Tuple

from pipeline.config_validation import DOTTED_PATH_RE, DOTTED_PATH_TEXT, join_path, type_name
from transforms.braze_facts import MAX_NAME_CHARS, RESERVED_EVENT_PROPERTIES, RESERVED_PURCHASE_PROPERTIES
from transforms.model import FieldMapping
from transforms.standard_attributes import STANDARD_ATTRIBUTES, UNSUPPORTED_ATTRIBUTES

__all__ = ["FieldMapping", "AMPLITUDE_EVENT_FIELDS", "ATTRIBUTE_IDENTIFIERS", "ATTRIBUTE_CONTROL_FIELDS", "EVENT_OBJECT_FIELDS",
           "RESERVED_EVENT_PROPERTIES", "RESERVED_PURCHASE_PROPERTIES", "MAPPING_KEYS", "MAX_BRAZE_NAME_CHARS",
           "attribute_name_problem", "event_property_name_problem", "source_problem", "MappingRules"]

MAPPING_KEYS = ("from", "to")
MAX_BRAZE_NAME_CHARS = MAX_NAME_CHARS


# Braze's primary identifiers on an object (docs/api-facts.md, B3), and the alias array of an export.
ATTRIBUTE_IDENTIFIERS = frozenset(("external_id", "braze_id", "user_alias", "user_aliases"))
# Keys of an attributes object that are not attributes (B6).
ATTRIBUTE_CONTROL_FIELDS = frozenset(("_update_existing_only", "_merge_objects", "push_token_import"))
# Fields of the event and purchase objects themselves (B5): a property named so would
# read as setting the object's own field, which a mapping never does.
EVENT_OBJECT_FIELDS = frozenset(("external_id", "braze_id", "user_alias", "email", "phone", "_update_existing_only",
                                 "app_id", "name", "time", "properties"))

# Top-level fields of an Amplitude event in either shape (docs/api-facts.md, A1, A2), and the SDK's.
AMPLITUDE_EVENT_FIELDS = frozenset("""
user_id device_id event_type event_name user_agent time event_properties user_properties groups group_properties
app_version platform os_name os_version device_brand device_manufacturer device_model device_family device_type
carrier device_carrier country region city dma language location_lat location_lng ip ip_address
price quantity revenue productId revenueType currency idfa idfv adid android_id android_app_set_id
event_id session_id insert_id $insert_id uuid amplitude_id plan library version_name start_version partner_id
ingestion_metadata extra paying data app server_received_time server_upload_time client_event_time
client_upload_time processed_time event_time created_at amplitude_event_type amplitude_attribution_ids
is_attribution_event sample_rate $schema
""".split())
_PROPERTY_OBJECTS = ("user_properties", "event_properties")


def _squash(name: str) -> str:
    return "".join(c for c in name.casefold() if c.isalnum())


_STANDARD_BY_SQUASHED = {_squash(name): name for name in STANDARD_ATTRIBUTES}


def source_problem(source: str) -> Optional[str]:
    """What is wrong with a dotted-path ``from`` (already checked for empty parts), or None."""
    first, _, rest = source.partition(".")
    if first in _PROPERTY_OBJECTS and not rest:
        return f"names the whole {first} object; name one property, e.g. {first}.plan"
    if first == "plan" and not rest:  # a user property named plan is the usual meaning
        return ("'plan' is Amplitude's tracking-plan object (plan.branch, plan.source, plan.version); "
                "for a user property write 'user_properties.plan'")
    if first in AMPLITUDE_EVENT_FIELDS:
        return None
    close = difflib.get_close_matches(first, sorted(AMPLITUDE_EVENT_FIELDS), n=1, cutoff=0.8)
    hint = f"'{close[0]}{'.' + rest if rest else ''}'" if close else f"'user_properties.{source}'"
    return (f"'{first}' is not a field of an Amplitude event (did you mean {hint}? "
            "Properties are under user_properties. or event_properties.)")


def _common_name_problem(name: str) -> Optional[str]:
    if name.startswith("$"):
        return "Braze refuses names that start with '$'"
    if len(name) > MAX_BRAZE_NAME_CHARS:
        return f"is {len(name)} characters long; Braze takes at most {MAX_BRAZE_NAME_CHARS}"
    return None


def attribute_name_problem(name: str, mapped: bool) -> Optional[str]:
    """Why ``name`` cannot be a Braze attribute this job writes, or None.

    ``mapped``: a mapping's ``to`` (new, so stricter: a near miss of a standard attribute is
    refused); otherwise a name in ``users.properties``, kept as it is in Amplitude."""
    problem = _common_name_problem(name)
    if problem:
        return problem
    if name in ATTRIBUTE_IDENTIFIERS:
        return (f"'{name}' is a Braze identifier, not an attribute: the sync's identifier sets it, "
                "and an attribute of that name would retarget the object")
    if name in ATTRIBUTE_CONTROL_FIELDS:
        return f"'{name}' is a Braze control field, not an attribute"
    if name in UNSUPPORTED_ATTRIBUTES:
        return f"'{name}' needs a structure this job does not build; it cannot be sent from an Amplitude field"
    standard = _STANDARD_BY_SQUASHED.get(_squash(name))
    if mapped and standard and standard != name:
        return (f"did you mean '{standard}'? Braze knows its standard attributes only by their "
                "lower-case names; another spelling would be a separate custom attribute")
    return None


def event_property_name_problem(name: str, purchases: bool) -> Optional[str]:
    """Why ``name`` cannot be a property of the sync's event (or purchase) objects, or None."""
    problem = _common_name_problem(name)
    if problem:
        return problem
    if name in RESERVED_EVENT_PROPERTIES:
        return f"Braze reserves '{name}' in event properties"
    if name in EVENT_OBJECT_FIELDS:
        return (f"'{name}' is a field of the Braze event object itself; a mapping only names a "
                "property inside 'properties' (choose another name)")
    if purchases and name in RESERVED_PURCHASE_PROPERTIES:
        return f"Braze reserves '{name}' in purchase properties (events.purchases is true)"
    return None


class MappingRules:
    """The ``properties`` / ``mappings`` checks, mixed into the syncs file's validator
    (which provides ``add``, ``mapping`` and ``string``)."""

    def attribute_names(self, section: dict, path: str) -> Dict[str, str]:
        """Check ``users.properties`` names; returns {name: path} of the usable ones."""
        return self._plain_names(section, path, lambda name: attribute_name_problem(name, mapped=False))

    def event_property_names(self, section: dict, path: str) -> Dict[str, str]:
        """``events.properties`` keep today's rules (no new refusals); returns {name: path}."""
        return self._plain_names(section, path, lambda name: None)

    def _plain_names(self, section, path, problem_of) -> Dict[str, str]:
        taken: Dict[str, str] = {}
        raw = section.get("properties")
        if not isinstance(raw, list):
            return taken  # reported by string_list()
        for i, name in enumerate(raw):
            if not isinstance(name, str) or not name or name in taken:
                continue  # reported by string_list()
            item_path = f"{join_path(path, 'properties')}[{i}]"
            problem = problem_of(name)
            if problem:
                self.add(item_path, problem)
            taken[name] = item_path
        return taken

    def field_mappings(self, section: dict, path: str, taken: Dict[str, str], problem_of) -> Tuple:
        """``mappings: [{from, to}]`` → ``(FieldMapping, ...)``; ``taken`` holds the Braze names
        already fed (the plain properties), with the path that feeds each."""
        if "mappings" not in section:
            return ()
        p = join_path(path, "mappings")
        value = section["mappings"]
        if not isinstance(value, list):
            self.add(p, f"must be a list of {{from, to}} entries, got {type_name(value)}")
            return ()
        out = []
        for i, item in enumerate(value):
            ip = f"{p}[{i}]"
            entry = self.mapping(item, ip, MAPPING_KEYS, required=MAPPING_KEYS)
            if entry is None:
                continue
            source = self.string(entry, "from", ip, pattern=DOTTED_PATH_RE, pattern_text=DOTTED_PATH_TEXT)
            if source is not None and source_problem(source):
                self.add(join_path(ip, "from"), source_problem(source))
                source = None
            target = self.string(entry, "to", ip)
            if target is not None:
                problem = problem_of(target)
                if problem is None and target in taken:
                    problem = f"'{target}' is already fed by {taken[target]} (one Braze field takes one source)"
                if problem:
                    self.add(join_path(ip, "to"), problem)
                taken.setdefault(target, ip)
                target = None if problem else target
            if source is not None and target is not None:
                out.append(FieldMapping(source=source, target=target))
        return tuple(out)
