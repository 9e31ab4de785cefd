"""An AMQP node that holds declarations for good, as a node cut off from its cluster's
majority does (RabbitMQ 4.2+ on Khepri): what the bounds on declaring at connect are for."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any, Final

import pamqp.commands
import pamqp.constants
import pamqp.frame
from pamqp.base import Frame

from devtools.rabbitnode import LOOPBACK

START: Final = pamqp.commands.Connection.Start(
    server_properties={"capabilities": {"publisher_confirms": True}}
)
# What a node answers up to the first declaration; it answers nothing after that.
CONNECTION_REPLIES: Final[dict[type[object], Frame]] = {
    pamqp.commands.Connection.StartOk: pamqp.commands.Connection.Tune(2047, 131072, 0),
    pamqp.commands.Connection.Open: pamqp.commands.Connection.OpenOk(),
    pamqp.commands.Channel.Open: pamqp.commands.Channel.OpenOk(),
    pamqp.commands.Confirm.Select: pamqp.commands.Confirm.SelectOk(),
    pamqp.commands.Basic.Qos: pamqp.commands.Basic.QosOk(),
}
DECLARATIONS: Final = (pamqp.commands.Exchange.Declare, pamqp.commands.Queue.Declare)


class SilentNode:
    """An AMQP server on loopback that opens connections and channels, then holds the
    first declaration for good, as a node cut off from its cluster's majority does."""

    def __init__(self) -> None:
        self.declarations = 0
        self._connections: set[asyncio.Task[Any]] = set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            try:
                yield f"amqp://guest:guest@{LOOPBACK}:{port}/"
            finally:
                # Each connection ends with the test, whatever the client left open.
                for task in self._connections:
                    task.cancel()
                await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if task := asyncio.current_task():
            self._connections.add(task)
        try:
            await self._converse(reader, writer)
        finally:
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readexactly(8)  # the protocol header
            self._send(writer, 0, START)
            while True:
                channel, frame = await self._read(reader)
                if isinstance(frame, DECLARATIONS):
                    self.declarations += 1
                elif (reply := CONNECTION_REPLIES.get(type(frame))) is not None:
                    self._send(writer, channel, reply)

    @staticmethod
    def _send(writer: asyncio.StreamWriter, channel: int, frame: Frame) -> None:
        writer.write(pamqp.frame.marshal(frame, channel))

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, pamqp.frame.FrameTypes]:
        head = await reader.readexactly(pamqp.constants.FRAME_HEADER_SIZE)
        size = struct.unpack(">I", head[3:7])[0]
        _, channel, frame = pamqp.frame.unmarshal(head + await reader.readexactly(size + 1))
        return channel, frame
