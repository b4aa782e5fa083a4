"""A WebSocket client written by hand on a raw trio socket, for attacks: every byte
it sends is spelled out here from RFC 6455 (masked client frames, unmasked server
frames), so a test can send what no polite client library would."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

import trio

__all__ = ["RawSocket", "masked", "upgrade_request"]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def upgrade_request(port: int, path: str = "/", headers: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    ).encode()


def masked(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes = b"\0\0\0\0"
) -> bytes:
    """A client frame. The default all-zero mask keeps big payloads cheap to build
    (it is a valid mask: the server unmasks whatever key it gets)."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = bytes((first, 0x80 | 126)) + struct.pack("!H", n)
    else:
        header = bytes((first, 0x80 | 127)) + struct.pack("!Q", n)
    if mask == b"\0\0\0\0":
        return header + mask + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket:
    """One upgraded connection: send raw frames, read the server's frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, port: int, path: str = "/") -> RawSocket:
        raw = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await raw.stream.send_all(upgrade_request(port, path))
        head = await raw.read_head()
        assert head.startswith(b"HTTP/1.1 101"), head
        return raw

    async def read_head(self) -> bytes:
        """The HTTP answer's head (up to the blank line); what follows stays buffered."""
        while b"\r\n\r\n" not in self._buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(bytes(self._buffer))
            self._buffer += data
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer = bytearray(rest)
        return head

    async def send_json(self, frame: Any) -> None:
        await self.stream.send_all(masked(OP_TEXT, json.dumps(frame).encode()))

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame ``(opcode, payload)``; pings are answered."""
        while True:
            parsed = self._parse()
            if parsed is None:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("connection closed without a close frame")
                self._buffer += data
                continue
            opcode, payload = parsed
            if opcode == OP_PING:
                await self.stream.send_all(masked(OP_PONG, payload))
                continue
            return opcode, payload

    async def receive_json(self) -> Any:
        opcode, payload = await self.frame()
        assert opcode == OP_TEXT, (opcode, payload)
        return json.loads(payload)

    async def close_code(self) -> int:
        """Read until the server's close frame; its code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == OP_CLOSE:
                return int.from_bytes(payload[:2], "big") if payload else 1005

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        n = buf[1] & 0x7F
        start = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, start = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, start = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < start + n:
            return None
        opcode, payload = buf[0] & 0x0F, bytes(buf[start : start + n])
        del buf[: start + n]
        return opcode, payload

    def reset(self) -> None:
        """Vanish abruptly: a TCP RST, no close frame."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.stream.socket.close()
