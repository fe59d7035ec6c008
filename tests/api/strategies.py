"""Hypothesis strategies for JSON values and event-shaped objects (right, wrong or missing
fields), shared by test_bad_input and test_openapi."""

from __future__ import annotations

from hypothesis import strategies as st

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
streams = st.one_of(
    st.sampled_from(["sensors", "a.b", "x1.y2", "Bad", "a..b", ".a", "a.", ""]),
    st.text(max_size=12),
    st.from_regex(r"[a-z0-9]{1,5}(\.[a-z0-9]{1,5}){0,2}", fullmatch=True),
)
payloads = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "entity_id": st.one_of(st.text(max_size=12), json_values),
            "properties": st.one_of(st.dictionaries(st.text(max_size=6), json_values), json_values),
        },
    ),
    json_values,
)
# Objects shaped like events, each field right, wrong or missing.
event_like = st.fixed_dictionaries(
    {},
    optional={
        "eventId": st.one_of(st.none(), st.text(max_size=10), json_values),
        "stream": st.one_of(streams, json_values),
        "source": st.one_of(st.text(max_size=10), json_values),
        "timestamp": st.one_of(st.integers(min_value=-(2**64), max_value=2**64), json_values),
        "key": st.one_of(st.text(max_size=5), json_values),
        "schema": st.one_of(st.text(max_size=5), json_values),
        "payload": payloads,
        "extra": json_values,
    },
)
anything = st.one_of(event_like, json_values)
