"""Parsing: both Amplitude shapes, arrays, and a dead-letter reason for every kind of bad input."""
import orjson
import pytest

from transforms.parse import ParseError, parse_event_time_ms, parse_message
from transforms.records import ParsedEvent


def _nested(levels):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


def _parse(data, publish_ms=1_700_000_000_000):
    return list(parse_message(data, "m1", publish_ms))


def test_http_v2_event():
    data = orjson.dumps({"event_type": "Play", "user_id": "user-1", "time": 1700000000123, "insert_id": "i-1",
                         "event_properties": {"a": 1}})
    [event] = _parse(data)
    assert event == ParsedEvent("m1/0", 1_700_000_000_000, "i-1", 1700000000123, event.event)
    assert event.event["user_properties"] == {}


def test_export_shape_event():
    data = orjson.dumps({"event_type": "Play", "device_id": "d-1", "event_time": "2022-02-28 20:07:01.795000",
                         "$insert_id": "x", "uuid": "u"})
    [event] = _parse(data)
    assert event.time_ms == 1646078821795
    assert event.insert_id == "x"


def test_uuid_is_the_last_resort_insert_id_and_publish_time_the_last_resort_time():
    [event] = _parse(orjson.dumps({"event_type": "Play", "user_id": "user-1", "uuid": "u-9"}))
    assert (event.insert_id, event.time_ms) == ("u-9", 1_700_000_000_000)


def test_array_message_gives_one_source_per_event():
    data = orjson.dumps([{"event_type": "A", "user_id": "user-1", "time": 1700000000001}, {"event_type": "B", "user_id": "user-2", "time": 1700000000002}])
    assert [e.source for e in _parse(data)] == ["m1/0", "m1/1"]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xff\xfe", "invalid_encoding"),
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[]", "empty_message"),
        (b"42", "not_an_object"),
        (orjson.dumps({"user_id": "user-1"}), "missing_event_type"),
        (orjson.dumps({"event_type": "", "user_id": "user-1"}), "missing_event_type"),
        (orjson.dumps({"event_type": "A"}), "missing_user_and_device_id"),
        (orjson.dumps({"event_type": "A", "user_id": "user-1", "time": "2024-01-01"}), "invalid_time"),
        (orjson.dumps({"event_type": "A", "user_id": "user-1", "event_time": "yesterday"}), "invalid_time"),
        (orjson.dumps({"event_type": "A", "user_id": "user-1", "event_properties": [1]}), "invalid_properties"),
        (orjson.dumps({"event_type": 7, "user_id": "user-1"}), "invalid_event_type"),
        (orjson.dumps({"event_type": "_identify", "user_id": "user-1"}), "reserved_event_type"),
        (orjson.dumps({"event_type": "A", "user_id": 12345}), "invalid_id_type"),
        (orjson.dumps({"event_type": "A", "user_id": "Anonymous", "device_id": "null"}), "placeholder_id"),
        (orjson.dumps({"event_type": "A", "user_id": "u" * 1025}), "id_too_long"),
        (orjson.dumps({"event_type": "A", "user_id": "user-1", "time": 1700000000}), "time_out_of_range"),
        (b'{"event_type": "A", "user_id": "user-1", "time": NaN}', "invalid_json"),
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
        (orjson.dumps({"event_type": "A", "user_id": "u", "event_properties": {"p": _nested(65)}}), "too_deep"),
        (b'{"event_type": "A", "user_id": "' + b"x" * (1024 * 1024) + b'"}', "message_too_large"),
    ],
)
def test_bad_input_becomes_a_reason_never_an_exception(data, reason):
    [(source, error, payload)] = _parse(data)
    assert source == "m1/0"
    assert error.reason == reason
    assert error.detail


def test_one_bad_event_in_an_array_keeps_the_good_ones_and_names_the_bad_one():
    data = orjson.dumps([{"event_type": "A", "user_id": "user-1", "time": 1700000000001}, {"user_id": "user-2"}])
    good, (source, error, payload) = _parse(data)
    assert payload == orjson.dumps({"user_id": "user-2"})  # its own bytes, as they stand in the message
    assert good.source == "m1/0"
    assert (source, error.reason) == ("m1/1", "missing_event_type")
    assert orjson.loads(payload) == {"user_id": "user-2"}  # the event to replay, not the whole array


def test_missing_time_without_publish_time_is_an_error():
    with pytest.raises(ParseError) as e:
        parse_event_time_ms({"event_type": "A"}, None)
    assert e.value.reason == "missing_time"


def test_an_event_at_the_depth_limit_passes_and_one_level_more_is_refused():
    at_limit = {"event_type": "A", "user_id": "u", "event_properties": {"p": _nested(62)}}  # 64 levels
    [event] = _parse(orjson.dumps(at_limit))
    assert isinstance(event, ParsedEvent)
    over = {"event_type": "A", "user_id": "u", "event_properties": {"p": _nested(63)}}
    [(_, error, _)] = _parse(orjson.dumps(over))
    assert error.reason == "too_deep"


def test_each_bad_event_of_an_array_is_dead_lettered_with_its_own_exact_bytes():
    data = (b'[ {"event_type": "A", "user_id": "u1", "time": 1700000000001} ,\n'
            b'  {"user_id": "u2", "note": "a ] and a , inside \\" a string"},'
            b'{"event_type": "B", "user_id": "u3", "event_properties": {"p": ' + orjson.dumps(_nested(70)) + b'}} ]')
    good, (s1, e1, b1), (s2, e2, b2) = _parse(data)
    assert good.source == "m1/0"
    assert (s1, e1.reason) == ("m1/1", "missing_event_type")
    assert b1 == b'{"user_id": "u2", "note": "a ] and a , inside \\" a string"}'
    assert (s2, e2.reason) == ("m1/2", "too_deep")
    assert b2.startswith(b'{"event_type": "B"') and b2.endswith(b"}}") and b2 in data
