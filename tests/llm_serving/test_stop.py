"""Stop strings over text streamed in arbitrary pieces: no partial stop string ever leaks."""
from __future__ import annotations

import random

import pytest

from llm_serving.api.stop import StopChecker


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    """Released text after each piece (the final flush folded into the last one) and whether it stopped."""
    checker = StopChecker(stops)
    released = []
    for piece in pieces:
        released.append(checker.push(piece))
        if checker.stopped:
            return released, True
    released[-1] += checker.flush()
    return released, False


def random_split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) if len(text) > 1 else []
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    # Tokens may carry no text (incomplete multi-byte characters, special tokens).
    for _ in range(rng.randint(0, 3)):
        pieces.insert(rng.randint(0, len(pieces)), "")
    return pieces


def test_stop_spanning_pieces_is_cut_and_nothing_after_it_is_released():
    released, stopped = run(["###"], ["Hello #", "#", "# world"])
    assert stopped and released == ["Hello ", "", ""]


def test_held_text_is_released_once_it_cannot_start_a_stop_string():
    released, stopped = run(["</s>", "\n\n"], ["a <", "/x", " b\n", "c"])
    assert not stopped
    assert released == ["a ", "</x", " b", "\nc"]


def test_end_of_text_flushes_a_held_partial_stop():
    released, stopped = run(["STOP"], ["go ST", "O"])
    assert not stopped and "".join(released) == "go STO" and released[0] == "go "


def test_earliest_of_several_stop_strings_wins():
    released, stopped = run(["world", "lo w"], ["hello world"])
    assert stopped and released == ["hel"]


@pytest.mark.parametrize("seed", range(200))
def test_random_splits_never_leak_and_always_release_the_text_before_the_stop(seed: int):
    rng = random.Random(seed)
    alphabet = "ab \n#é"
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 4))]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
    released, stopped = run(stops, random_split(text, rng))
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[:min(hits)] if hits else text
    assert stopped == bool(hits)
    assert "".join(released) == expected
    # After every piece, what was released so far holds no stop string, and when the stream
    # stops, no prefix of the matched stop string was released before it.
    so_far = ""
    for part in released:
        so_far += part
        assert not any(s in so_far for s in stops)
        assert expected.startswith(so_far)


def test_empty_stop_string_is_rejected_and_push_after_stop_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        StopChecker([""])
    checker = StopChecker(["x"])
    checker.push("x")
    with pytest.raises(RuntimeError):
        checker.push("y")
