from hypothesis import given, settings
from hypothesis import strategies as st

from pollama.runner.stop import StopBuffer


def run(stops, pieces):
    """Push every piece; returns (all emitted text, stopped, text flushed at the end)."""
    buf = StopBuffer(stops)
    out, stopped = [], False
    for piece in pieces:
        text, stopped = buf.push(piece)
        out.append(text)
        if stopped:
            break
    return "".join(out), stopped, buf.flush()


def test_no_stop_strings_passes_everything_through():
    buf = StopBuffer([])
    assert buf.push("hello") == ("hello", False)
    assert buf.flush() == ""


def test_stop_inside_one_piece():
    buf = StopBuffer(["</s>"])
    assert buf.push("Hello</s>ignored") == ("Hello", True)
    assert buf.push("more") == ("", True)  # nothing after a stop
    assert buf.flush() == ""


def test_stop_split_across_many_pieces():
    buf = StopBuffer(["<|im_end|>"])
    assert buf.push("Hi <") == ("Hi ", False)
    assert buf.push("|im") == ("", False)
    assert buf.push("_e") == ("", False)
    assert buf.push("nd|") == ("", False)
    assert buf.push(">tail") == ("", True)


def test_partial_match_that_diverges_is_released():
    buf = StopBuffer(["STOP"])
    assert buf.push("a ST") == ("a ", False)
    assert buf.push("O") == ("", False)
    assert buf.push("P?") == ("", True)
    buf = StopBuffer(["STOP"])
    assert buf.push("a ST") == ("a ", False)
    assert buf.push("ORM") == ("STORM", False)


def test_held_text_is_released_by_flush():
    buf = StopBuffer(["\n\nUser:"])
    assert buf.push("The answer.\n\nUs") == ("The answer.", False)
    assert buf.flush() == "\n\nUs"
    assert buf.flush() == ""


def test_multiple_stop_strings_earliest_wins():
    assert run(["world", "lo"], ["hello world"])[:2] == ("hel", True)
    assert run(["\n", "."], ["one. two\n"])[:2] == ("one", True)
    # A longer stop whose prefix is held must not hide a shorter one completed meanwhile.
    assert run(["abcd", "bc"], ["a", "b", "c", "d"])[:2] == ("a", True)


def test_overlapping_prefixes():
    # "abab" ends with "ab", a prefix of "abc": only the first "ab" is safe.
    buf = StopBuffer(["abc"])
    assert buf.push("ab") == ("", False)
    assert buf.push("ab") == ("ab", False)
    assert buf.push("c") == ("", True)
    # A self-overlapping stop: "aab" must be found in "aaab" fed one letter at a time.
    assert run(["aab"], list("xaaab"))[:2] == ("xa", True)


def test_stop_at_the_very_start():
    assert run(["###"], ["#", "##", "rest"]) == ("", True, "")
    assert run(["###"], ["###"]) == ("", True, "")


def test_unicode():
    assert run(["終わり"], ["こんにちは終", "わり。"])[:2] == ("こんにちは", True)
    assert run(["🛑"], ["go 🚀 ", "🛑 no"])[:2] == ("go 🚀 ", True)
    assert run(["é!"], ["café", " ok"]) == ("café ok", False, "")


def test_empty_stop_string_is_ignored():
    assert run([""], ["abc"]) == ("abc", False, "")


# The emitted text plus what flush releases must be exactly the input cut before the first
# occurrence of any stop string, however the input is split into pieces.
alphabet = st.text(alphabet="abc<|>é", max_size=30)


@settings(max_examples=400, deadline=None)
@given(text=alphabet, stops=st.lists(st.text(alphabet="abc<|>é", min_size=1, max_size=4), max_size=3), cuts=st.lists(st.integers(0, 30)))
def test_any_split_gives_the_same_result(text, stops, cuts):
    bounds = sorted({c for c in cuts if c <= len(text)} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    emitted, stopped, flushed = run(stops, pieces)
    # The stop string whose first occurrence is complete earliest wins (as when streaming).
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    if hits:
        assert stopped and emitted == text[: min(hits)[1]] and flushed == ""
    else:
        assert not stopped and emitted + flushed == text
        # Nothing that could still become a stop string was emitted early.
        for s in stops:
            for n in range(1, len(s)):
                if text.endswith(s[:n]):
                    assert flushed.endswith(s[:n])
