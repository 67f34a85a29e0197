"""A do-nothing HTTP/1.1 server answering every request with the same FHIR resource.

``python -m bench.nullserver PORT``. The benchmark points the load generator at it to
measure how many requests per second the load generator itself can drive on this
machine: if that is several times what the FHIR server reaches, the load generator is
not what limits the measurement.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

BODY = orjson.dumps(
    {
        "resourceType": "Patient",
        "id": "3f1c2a4e-0d2b-4a53-9a57-2a4a0c6c1b11",
        "meta": {"versionId": "1", "lastUpdated": "2024-03-01T10:00:00.000000Z"},
        "identifier": [{"system": "urn:example:bench", "value": "bench-1"}],
        "active": True,
        "name": [{"use": "official", "family": "Bench1", "given": ["Load", "T1"]}],
        "gender": "male",
        "birthDate": "1931-02-02",
        "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345"}],
        "telecom": [{"system": "phone", "value": "555-0001", "use": "home"}],
    }
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(BODY), BODY)
)


class Handler(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Handler, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> int:
    asyncio.run(serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
