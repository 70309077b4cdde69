"""The pure parts of the shared reputation (cluster/reputation.py): the standing's
hash value, the slices' fields per (member, provider), the window's sum."""

from __future__ import annotations

import pytest

from smtplb.cluster.reputation import by_key, decode_standing, encode_standing, total
from smtplb.reputation.standing import Counts, Reputation, Standing


def test_a_standing_survives_its_hash_value_even_with_a_bar_in_the_reason() -> None:
    s = Standing(Reputation.QUARANTINED, 1.5, 3601.5, 0, "policy_block rate 9% | over 20")
    assert decode_standing(encode_standing(s)) == s
    assert encode_standing(s).startswith("quarantined|")  # what the Lua CAS compares
    assert decode_standing("") == Standing()
    with pytest.raises(ValueError):
        decode_standing("nonsense")


def test_slices_are_split_per_member_and_provider_and_bad_fields_are_skipped() -> None:
    slices = {
        10: {"m|gmail|policy_block": 3, "m|*|policy_block": 3, "junk": 1},
        11: {"m|gmail|delivered": 5, "m|gmail|not_an_outcome": 2},
    }
    keys = by_key(slices)
    assert set(keys) == {("m", "gmail"), ("m", "*")}
    assert keys[("m", "gmail")][10] == Counts(policy_block=3)
    assert keys[("m", "gmail")][11] == Counts(delivered=5)


def test_the_window_sum_leaves_out_the_slices_before_first() -> None:
    slices = {9: Counts(hard_bounce=4), 10: Counts(delivered=2), 11: Counts(delivered=3)}
    assert total(slices, 10) == Counts(delivered=5)
    into = Counts(complaint=1)
    assert total(slices, 0, into) is into and into == Counts(5, 0, 4, 0, 0, 1)
