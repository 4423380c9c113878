"""The Redis client's reply side (p2ptun.net.redis) over an in-memory stream: whatever bytes a
server sends, a read ends in a reply or a RedisError (never another exception, never an
unbounded buffer); commands are framed by hiredis' encoder."""

from __future__ import annotations

import contextlib

import hiredis
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.net.redis import RedisClient, RedisError, RedisWire


async def read_after(data: bytes, max_reply: int = 4096) -> object:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    wire = RedisWire(client_stream, max_reply)
    await server_stream.send_all(data)
    await server_stream.aclose()
    return await wire.receive()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_end_in_a_reply_or_a_redis_error(data: bytes) -> None:
    async def main() -> None:
        with contextlib.suppress(RedisError):
            await read_after(data)

    trio.run(main)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=50), max_size=5))
def test_replies_round_trip(items: list[bytes]) -> None:
    body = b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(i), i) for i in items)

    async def main() -> object:
        return await read_after(body)

    assert trio.run(main) == items


async def test_a_reply_past_the_bound_is_an_error() -> None:
    with pytest.raises(RedisError, match="larger than 100"):
        await read_after(b"$1000\r\n" + b"x" * 1002, max_reply=100)
    with pytest.raises(RedisError, match="closed by the server"):
        await read_after(b"$10\r\nabc")
    with pytest.raises(RedisError, match="protocol error"):
        await read_after(b"?what\r\n")


async def test_commands_are_hiredis_frames_and_error_replies_raise() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RedisClient(RedisWire(client_stream, 4096))
    async with trio.open_nursery() as nursery:

        async def server() -> None:
            got = await server_stream.receive_some(1000)
            assert got == hiredis.pack_command(("SET", "k", b"\x00\r\n"))
            await server_stream.send_all(b"-ERR nope\r\n")

        nursery.start_soon(server)
        with pytest.raises(RedisError, match="ERR nope"):
            await client.command("SET", "k", b"\x00\r\n")
