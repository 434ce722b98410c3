"""The lenient verdict (last number in the response), an evaluation metric beside the strict scorers."""

import pytest

from dapo.rewards.text import LENIENT_TAIL_CHARS, last_number_matches


@pytest.mark.parametrize(
    "response, truth, expected",
    [
        ("2 + 3 = 5, so it is 5.", "5", True),
        ("Answer: -3", "-3", True),
        ("9 - 12 = -3", "-3", True),
        ("9-6", "-6", False),  # the "-" between two digits is an operator, not a sign: the last number is 6
        ("9-6", "6", True),
        ("The total is 1,000 apples", "1000", True),
        ("It is 2.50", "2.5", True),  # the same value
        ("5 or 6", "5", False),  # only the last number counts: listing candidates does not pay
        ("5", "6", False),
        ("no number here", "5", False),
        ("", "0", False),
        ("x = 5", "x+1", False),  # a ground truth that is not a number never matches
        (b"Answer: 7\xff", "7", True),  # bytes, invalid UTF-8 included
    ],
)
def test_last_number_matches(response, truth, expected):
    assert last_number_matches(response, truth) is expected


def test_only_the_tail_is_read():
    assert last_number_matches("7" + " " * LENIENT_TAIL_CHARS, "7") is False
    assert last_number_matches("1 " * 10**6 + "7", "7") is True  # a huge response costs the tail only
