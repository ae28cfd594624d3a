"""Pieces written from the engine thread: nothing lost, nothing reordered, nothing blocks.

A runner hands each completion's events to a `deliver` callback on the engine thread
(Job's docstring says why); whatever it declines, and everything after it, reaches the
request's own thread through the job's iteration.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest

from pollama.runner.generation import Done, GenerateOptions, Piece
from pollama.runner.parallel import Job
from pollama.runner.serve import _DirectWriter, completion_line


def done(count: int) -> Done:
    return Done(done_reason="stop", prompt_eval_count=1, prompt_eval_duration=1, eval_count=count,
                eval_duration=1, tokens=[1, 2])


def test_declined_events_and_all_after_them_go_to_the_iteration_in_order():
    taken = []
    job = Job([1], GenerateOptions(), deliver=lambda event: len(taken) < 2 and (taken.append(event) or True))
    events = [Piece(f"t{i}", i) for i in range(5)] + [done(5)]
    for event in events:
        job._put(event)
    assert taken == events[:2]
    assert list(job) == events[2:]  # the third was declined: it and all after it, Done included


def test_a_delivered_done_ends_the_iteration():
    taken = []
    job = Job([1], GenerateOptions(), deliver=lambda event: taken.append(event) or True)
    job._put(Piece("a", 1))
    job._put(done(1))
    assert list(job) == [] and [type(e) for e in taken] == [Piece, Done]


def test_an_error_still_reaches_the_iteration():
    job = Job([1], GenerateOptions(), deliver=lambda event: True)
    job._put(Piece("a", 1))
    job._put(ValueError("NaN logits"))
    with pytest.raises(ValueError, match="NaN logits"):
        list(job)


def test_a_full_socket_leaves_the_rest_of_a_line_to_the_request_thread():
    """The engine thread never waits on a reader that stalls: the line the socket takes in
    part is finished, then the lines after it are written, by the request's thread."""
    engine_side, reader = socket.socketpair()
    engine_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = _DirectWriter(engine_side)
    events = [Piece("x" * 300 + str(i), i) for i in range(200)] + [done(200)]
    direct = 0
    for event in events:  # nobody reads yet: the buffer fills
        if not writer(event):
            break
        direct += 1
    assert 0 < direct < len(events)  # some went straight out, then the socket was full

    received = bytearray()
    draining = threading.Thread(target=lambda: [received.extend(chunk) for chunk in iter(lambda: reader.recv(65536), b"")])
    draining.start()
    engine_side.sendall(writer.take_rest() + b"".join(completion_line(e) for e in events[direct:]))
    engine_side.close()
    draining.join(10)
    lines = [json.loads(line) for line in received.decode().splitlines()]
    assert [line.get("content") for line in lines[:-1]] == [e.text for e in events[:-1]]
    assert lines[-1]["done"] and lines[-1]["eval_count"] == 200


def test_a_hung_up_server_cancels_the_job():
    engine_side, reader = socket.socketpair()
    reader.close()
    writer = _DirectWriter(engine_side)
    writer.job = Job([1], GenerateOptions())
    assert writer(Piece("a", 1)) is True  # taken (dropped): nobody is there to read it
    assert writer.job.cancelled
    assert writer(Piece("b", 2)) is False
