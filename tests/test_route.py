"""Fan-out per sync: identifier mapping, selection, and a skip reason for everything not sent."""
import pytest
from apache_beam import pvalue

from pipeline.config import parse_syncs
from transforms.identifiers import IdentifierMapper
from pipeline.config import Identifier
from transforms.records import ParsedEvent
from transforms.route import _RouteDoFn


def route(sync_doc, event):
    [sync] = parse_syncs({"syncs": [{"name": "s", "endpoint": "https://rest.iad-01.braze.com",
                                     "api_key": "env:K", **sync_doc}]})
    fn = _RouteDoFn((sync,))
    fn.setup()
    event = {"event_properties": {}, "user_properties": {}, **event}
    out = {"track": [], "identify": [], "outcomes": []}
    for element in fn.process(ParsedEvent("m/0", 5, "i", 1_700_000_000_000, event)):
        if isinstance(element, pvalue.TaggedOutput):
            out[element.tag].append(element.value)
        else:
            out["track"].append(element)
    return out


EVERYTHING = {"events": {"select": [{"event_type": "*"}], "properties": ["total"]}, "users": {"properties": ["plan"]}}


def test_selected_event_becomes_an_event_object_with_only_selected_properties():
    out = route({**EVERYTHING, "app_id": "app"}, {"event_type": "Buy", "user_id": "user-1",
                                                 "event_properties": {"total": 3, "other": 1}})
    [item] = out["track"]
    assert item.obj == {"external_id": "user-1", "name": "Buy", "time": "2023-11-14T22:13:20.000Z",
                        "app_id": "app", "properties": {"total": 3}}
    assert [(o.branch, o.reason) for o in out["outcomes"]] == [("identify", "no_selected_property")]


@pytest.mark.parametrize(
    "sync_doc, event, track_reason",
    [
        ({"users": {"properties": ["plan"]}}, {"event_type": "Buy", "user_id": "user-1"}, "events_disabled"),
        (EVERYTHING, {"event_type": "$identify", "user_id": "user-1"}, "identify_call"),
        ({"events": {"select": [{"event_type": "Buy"}]}}, {"event_type": "Sell", "user_id": "user-1"}, "not_selected"),
        (EVERYTHING, {"event_type": "Buy", "device_id": "d-1"}, "missing_identifier"),
    ],
)
def test_track_skips_say_why(sync_doc, event, track_reason):
    out = route(sync_doc, event)
    assert out["track"] == []
    assert ("track", track_reason) in [(o.branch, o.reason) for o in out["outcomes"]]


def test_identify_work_is_keyed_by_sync_and_user_and_carries_only_selected_updates():
    out = route(EVERYTHING, {"event_type": "$identify", "user_id": "user-1",
                             "user_properties": {"$set": {"plan": "pro", "x": 1}}})
    [(key, (source, publish_ms, fields, updates))] = out["identify"]
    assert (key, source, fields, updates) == ("s|user-1", "m/0", {"external_id": "user-1"}, [("$set", "plan", "pro")])


@pytest.mark.parametrize(
    "identifier, update_only, event, expected",
    [
        (Identifier("external_id", "user_id"), False, {"user_id": "u-1"}, {"external_id": "u-1"}),
        (Identifier("external_id", "user_id"), True, {"user_id": "u-1"}, {"external_id": "u-1", "_update_existing_only": True}),
        (Identifier("braze_id", "user_properties.bid"), False, {"user_properties": {"bid": "b-9"}}, {"braze_id": "b-9"}),
        # alias-only users are created only with an explicit false
        (Identifier("user_alias", "device_id", "amp"), False, {"device_id": "d-1"},
         {"user_alias": {"alias_name": "d-1", "alias_label": "amp"}, "_update_existing_only": False}),
        (Identifier("external_id", "user_properties.crm_id"), False, {"user_properties": {"crm_id": 42}}, {"external_id": "42"}),
    ],
)
def test_identifier_mapping(identifier, update_only, event, expected):
    mapper = IdentifierMapper(identifier, update_only)
    assert mapper.fields(mapper.user_key(event)) == expected


@pytest.mark.parametrize("value", [None, "", True, {"a": 1}, [1]])
def test_unusable_identifier_values_mean_no_user(value):
    assert IdentifierMapper(Identifier(), False).user_key({"user_id": value}) is None
