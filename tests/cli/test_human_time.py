"""`list`'s MODIFIED and `ps`'s UNTIL in Ollama's words.

Expected strings are read off Ollama's format/time.go (humanDuration, HumanTime) and its
format/time_test.go, at github.com/ollama/ollama commit fb30760 (v0.33.0-rc2), and off
cmd/cmd.go's ListRunningHandler ("Stopping..." once the expiry has passed): seconds and
minutes are truncated, hours rounded (math.Round), days/weeks/months/years divide the rounded
hours, "Forever" is more than 20 years ahead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pollama.cli.models import human_time
from pollama.cli.remote import processor, until

NOW = datetime(2026, 12, 8, 1, 30, 0, tzinfo=UTC)

CASES = [
    # (seconds before now (negative: after), Ollama's words)
    (0, "Less than a second ago"),
    (0.8, "Less than a second ago"),
    (-0.8, "Less than a second from now"),  # time_test.go "soon"
    (1, "1 second ago"),
    (1.9, "1 second ago"),
    (2, "2 seconds ago"),
    (59.9, "59 seconds ago"),
    (60, "About a minute ago"),
    (119, "About a minute ago"),
    (120, "2 minutes ago"),
    (-4 * 60 - 30, "4 minutes from now"),
    (59 * 60 + 59, "59 minutes ago"),
    (3600, "About an hour ago"),
    (5399, "About an hour ago"),  # 1.4997 h rounds to 1
    (5400, "2 hours ago"),  # 1.5 h rounds half away from zero (Go), not to even
    (2 * 3600, "2 hours ago"),
    (47 * 3600 + 1799, "47 hours ago"),
    (47 * 3600 + 1800, "2 days ago"),  # rounds to 48 h
    (48 * 3600, "2 days ago"),  # time_test.go "time in the past"
    (-48 * 3600, "2 days from now"),  # time_test.go "time in the future"
    (13 * 86400, "13 days ago"),
    (14 * 86400, "2 weeks ago"),
    (59 * 86400, "8 weeks ago"),
    (60 * 86400, "2 months ago"),
    (364 * 86400, "12 months ago"),
    (729 * 86400, "24 months ago"),
    (730 * 86400, "2 years ago"),
    (10 * 365 * 86400, "10 years ago"),
    (-20 * 365 * 86400, "20 years from now"),
    (-21 * 365 * 86400, "Forever"),  # int(hours)/24/365 < -20
    (-200 * 365 * 86400, "Forever"),  # time_test.go "time way in the future"
]


@pytest.mark.parametrize("seconds, words", CASES)
def test_human_time_in_ollamas_words(seconds, words):
    assert human_time(NOW - timedelta(seconds=seconds), now=NOW) == words


def test_no_time_is_the_zero_word():
    assert human_time(None) == "Never"  # list's and ps's zeroValue
    assert human_time(None, "never") == "never"  # time_test.go "zero value"


def test_ps_until():
    later = lambda seconds: (NOW + timedelta(seconds=seconds)).isoformat()  # noqa: E731
    assert until(later(4 * 60 + 59), now=NOW) == "4 minutes from now"
    assert until(later(-1), now=NOW) == "Stopping..."
    assert until(later(300 * 365 * 86400), now=NOW) == "Forever"


@pytest.mark.parametrize("size, size_vram, words", [
    # cmd/cmd.go ListRunningHandler at fb30760: CPU share math.Round'ed (halves up), GPU the rest.
    (1000, 0, "100% CPU"),
    (1000, 1000, "100% GPU"),
    (1000, 1001, "Unknown"),
    (0, 5, "Unknown"),
    (1000, 520, "48%/52% CPU/GPU"),
    (1000, 525, "48%/52% CPU/GPU"),  # 47.5% on the CPU rounds up to 48
    (1000, 995, "1%/99% CPU/GPU"),  # 0.5% rounds up to 1
    (1000, 996, "0%/100% CPU/GPU"),
])
def test_ps_processor(size, size_vram, words):
    assert processor(size, size_vram) == words
