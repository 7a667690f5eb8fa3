"""Fan-out per sync: identifier mapping, selection, mappings, anonymous devices, and a skip reason
for everything not sent."""
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
    out = {"track": [], "identify": [], "outcomes": [], "anonymous": []}
    for element in fn.process(ParsedEvent("m/0", 5, "i", 1_700_000_000_000, event)):
        if isinstance(element, pvalue.TaggedOutput):
            out[element.tag].append(element.value)
        else:
            assert element.after == -1  # track objects of events that update nobody need no order
            out["track"].extend(element.items)
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
    [(key, (source, publish_ms, time_ms, fields, updates, track))] = out["identify"]
    assert (key, source, time_ms, fields, updates, track) == (
        "s|user-1", "m/0", 1_700_000_000_000, {"external_id": "user-1"}, (("$set", "plan", "pro"),), ())


def test_an_event_that_updates_its_user_sends_its_objects_along_with_the_update():
    out = route(EVERYTHING, {"event_type": "Buy", "user_id": "user-1", "user_properties": {"plan": "pro"}})
    [(_, (_, _, _, _, updates, track))] = out["identify"]
    assert out["track"] == [] and updates == (("$set", "plan", "pro"),)
    assert [(i.kind, i.obj["name"], i.branch) for i in track] == [("events", "Buy", "track")]


def test_clear_all_reaches_identify_for_a_sync_with_selected_properties():
    out = route(EVERYTHING, {"event_type": "$identify", "user_id": "user-1", "user_properties": {"$clearAll": "-"}})
    [(_, (_, _, _, _, updates, _))] = out["identify"]
    assert updates == (("$clearAll", "", None),)


PURCHASES = {"events": {"select": [{"event_type": "*"}], "properties": ["sku"], "purchases": True}}


def test_revenue_event_becomes_a_purchase_where_the_sync_asks_for_it():
    event = {"event_type": "Order Completed", "user_id": "user-1", "price": 9.5, "quantity": 2, "productId": "sku-1",
             "currency": "eur", "event_properties": {"sku": "sku-1", "other": 1}}
    [item] = route(PURCHASES, event)["track"]
    assert (item.kind, item.sources) == ("purchases", ("m/0",))
    assert item.obj == {"external_id": "user-1", "product_id": "sku-1", "currency": "EUR", "price": 9.5, "quantity": 2,
                        "time": "2023-11-14T22:13:20.000Z", "properties": {"sku": "sku-1"}}
    # Without the option the same event is a custom event.
    [plain] = route(EVERYTHING, event)["track"]
    assert plain.kind == "events"


def test_non_revenue_events_and_refunds_stay_custom_events_and_bad_revenue_is_skipped_with_the_reason():
    [plain] = route(PURCHASES, {"event_type": "Page Viewed", "user_id": "user-1"})["track"]
    [refund] = route(PURCHASES, {"event_type": "Refund", "user_id": "user-1", "price": -5})["track"]
    assert (plain.kind, refund.kind) == ("events", "events")
    out = route(PURCHASES, {"event_type": "Buy", "user_id": "user-1", "price": "9.99"})
    assert out["track"] == [] and ("track", "invalid_price") in [(o.branch, o.reason) for o in out["outcomes"]]


def test_a_quantity_over_100_splits_into_purchases_that_each_carry_the_source():
    items = route(PURCHASES, {"event_type": "Buy", "user_id": "user-1", "revenue": 250.0, "quantity": 250})["track"]
    assert [(i.obj["quantity"], i.obj["price"], i.sources) for i in items] == [
        (100, 1.0, ("m/0",)), (100, 1.0, ("m/0",)), (50, 1.0, ("m/0",))]


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


# --- mappings: any Amplitude field under any Braze name, standard attributes in Braze's format


MAPPED = {"events": {"select": [{"event_type": "*"}], "properties": ["total"],
                     "mappings": [{"from": "platform", "to": "platform"},
                                  {"from": "event_properties.Order Total", "to": "order_total"}]},
          "users": {"properties": ["plan", "country"],
                    "mappings": [{"from": "user_properties.Email Address", "to": "email"},
                                 {"from": "city", "to": "home_city"}]}}


def test_mapped_fields_reach_identify_under_their_braze_names_in_brazes_format():
    out = route(MAPPED, {"event_type": "Buy", "user_id": "u-1", "city": "Oslo",
                         "user_properties": {"plan": "pro", "country": "United States",
                                             "Email Address": " Ada@Example.COM "}})
    [(_, (_, _, _, _, updates, _))] = out["identify"]
    assert sorted(updates) == [("$set", "country", "US"), ("$set", "email", "ada@example.com"),
                               ("$set", "home_city", "Oslo"), ("$set", "plan", "pro")]


def test_event_mappings_add_any_field_as_an_event_property():
    out = route(MAPPED, {"event_type": "Buy", "user_id": "u-1", "platform": "iOS",
                         "event_properties": {"total": 3, "Order Total": 9.5, "other": 1}})
    [item] = out["track"]
    assert item.obj["properties"] == {"total": 3, "platform": "iOS", "order_total": 9.5}


def test_a_value_that_cannot_be_made_valid_is_left_out_and_alone_it_is_the_skip_reason():
    out = route(MAPPED, {"event_type": "Buy", "user_id": "u-1",
                         "user_properties": {"$set": {"Email Address": "not an email", "plan": "pro"}}})
    [(_, (_, _, _, _, updates, _))] = out["identify"]
    assert updates == (("$set", "plan", "pro"),)  # the email is left out, the rest goes
    out = route(MAPPED, {"event_type": "Buy", "user_id": "u-1", "user_properties": {"country": "Narnia"}})
    assert out["identify"] == []
    assert ("identify", "unknown_country") in [(o.branch, o.reason) for o in out["outcomes"]]


# --- anonymous users: the device's alias profile, and what the merge step hears


ANONYMOUS = {"identifier": {"anonymous": {"source": "device_id", "alias_label": "amp_device"}}, **EVERYTHING}
ALIAS_FIELDS = {"user_alias": {"alias_name": "d-1", "alias_label": "amp_device"}, "_update_existing_only": False}


def test_an_event_without_a_user_id_goes_to_the_devices_alias_profile_and_is_reported():
    out = route(ANONYMOUS, {"event_type": "Buy", "device_id": "d-1", "user_properties": {"plan": "free"},
                            "event_properties": {"total": 2}})
    [(key, (source, _, _, fields, updates, [item]))] = out["identify"]
    assert fields == ALIAS_FIELDS and item.obj["user_alias"] == ALIAS_FIELDS["user_alias"]
    assert key == "s|\x00device:d-1" and item.user_key == "\x00device:d-1"  # never an external id's key
    assert [(k, s.user) for k, s in out["anonymous"]] == [("s|d-1", None)]
    assert [o.reason for o in out["outcomes"]] == []


def test_an_identified_event_names_its_user_to_the_merge_step():
    out = route(ANONYMOUS, {"event_type": "Buy", "user_id": "u-1", "device_id": "d-1"})
    assert [item.obj["external_id"] for item in out["track"]] == ["u-1"]
    assert [(k, s.source, s.user) for k, s in out["anonymous"]] == [("s|d-1", "m/0", "u-1")]


def test_an_anonymous_event_that_sends_nothing_is_not_reported_and_a_sync_without_the_option_skips_it():
    out = route({**ANONYMOUS, "events": {"select": [{"event_type": "Sell"}]}},
                {"event_type": "Buy", "device_id": "d-1"})
    assert (out["track"], out["identify"], out["anonymous"]) == ([], [], [])
    out = route(EVERYTHING, {"event_type": "Buy", "device_id": "d-1", "user_properties": {"plan": "free"}})
    assert out["anonymous"] == [] and out["identify"] == []
    assert sorted(o.reason for o in out["outcomes"]) == ["missing_identifier", "missing_identifier"]
