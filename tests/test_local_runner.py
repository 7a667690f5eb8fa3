"""The FnApiRunner without its state cache (pipeline/local_runner.py) keeps user state right."""
from typing import Tuple

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

from pipeline.local_runner import without_fnapi_state_cache


class _RunningTotal(beam.DoFn):
    """Per key: the running total (read-modify-write) and how many values came (bag)."""

    TOTAL = ReadModifyWriteStateSpec("total", VarIntCoder())
    SEEN = BagStateSpec("seen", VarIntCoder())

    def process(self, element, total=beam.DoFn.StateParam(TOTAL), seen=beam.DoFn.StateParam(SEEN)):
        key, value = element
        new = (total.read() or 0) + value
        total.write(new)
        seen.add(value)
        yield key, new, len(list(seen.read()))


def test_state_is_kept_across_elements_and_keys_without_the_cache():
    without_fnapi_state_cache()
    assert worker_handlers.STATE_CACHE_SIZE_MB == 0
    values = [("a", 1), ("b", 10), ("a", 1), ("a", 1), ("b", 10)]  # equal values: any order gives these
    with beam.Pipeline(runner="FnApiRunner") as p:
        out = (p | beam.Create(values) | beam.Map(lambda kv: kv).with_output_types(Tuple[str, int])
               | beam.ParDo(_RunningTotal()))
        assert_that(out, equal_to([("a", 1, 1), ("a", 2, 2), ("a", 3, 3), ("b", 10, 1), ("b", 20, 2)]))
