"""A MongoDB server for the tests: a real one, or the mongoeco stand-in.

- ``FHIR_TEST_MONGODB_URI`` set: the tests use that server (it must be a replica set or
  a sharded cluster, e.g. the one ``docker-compose.yml`` starts).
- Otherwise the tests start mongoeco's wire-protocol server (an in-memory MongoDB
  stand-in written in Python) on a free loopback port, once per test session, and stop
  it at the end. mongoeco needs Python >= 3.13, so it lives in its own virtual
  environment, ``.venv-mongoeco/`` at the top of the repository, created on first use
  (``python3.13 -m venv`` + ``pip install mongoeco pymongo``).

When neither can be had the MongoDB tests fail with the reason (the project's
machines carry Python 3.13).

Each store the tests make gets a database of its own, dropped when the store closes.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fhir_server.storage.port import Store

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-mongoeco"
REQUIREMENTS = ("mongoeco>=4.11,<5", "pymongo>=4.10")
STAMP = VENV / ".installed"
ENV_URI = "FHIR_TEST_MONGODB_URI"

# Runs in the mongoeco environment: serve until the parent closes our stdin.
SERVER_SCRIPT = """
import asyncio, sys
from mongoeco.wire import AsyncMongoEcoProxyServer

async def main():
    async with AsyncMongoEcoProxyServer(host="127.0.0.1", port=0) as server:
        print("READY", server.address.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


class MongoUnavailable(Exception):
    pass


def _works(cmd: list[str], env: dict[str, str] | None = None) -> bool:
    try:
        out = subprocess.run(
            [*cmd, "-c", "import sys; print(sys.version_info >= (3, 13))"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "True"


def find_python313() -> tuple[list[str], dict[str, str] | None]:
    """A Python >= 3.13 interpreter (and the environment to run it with)."""
    for name in ("python3.13", "python3.14"):
        if shutil.which(name) and _works([name]):
            return [name], None
    # pyenv installs it without putting it first on PATH: select it by version
    if shutil.which("pyenv"):
        out = subprocess.run(
            ["pyenv", "versions", "--bare"], capture_output=True, text=True, timeout=60
        )
        for version in sorted(out.stdout.split(), reverse=True):
            if version.startswith(("3.13", "3.14")):
                env = {**os.environ, "PYENV_VERSION": version}
                name = "python" + ".".join(version.split(".")[:2])
                if _works([name], env):
                    return [name], env
    raise MongoUnavailable("no Python >= 3.13 found (mongoeco, the MongoDB stand-in, needs it)")


def ensure_venv() -> Path:
    """The python of the mongoeco environment, created and installed on first use."""
    python = VENV / "bin" / "python"
    if STAMP.exists() and python.exists():
        return python
    cmd, env = find_python313()
    steps = [
        [*cmd, "-m", "venv", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
    ]
    for step in steps:
        run = subprocess.run(
            step,
            capture_output=True,
            text=True,
            timeout=900,
            env=env if step[0] != str(python) else None,
        )
        if run.returncode != 0:
            raise MongoUnavailable(
                f"could not set up mongoeco ({' '.join(step[-3:])}): {run.stderr[-2000:]}"
            )
    STAMP.write_text(" ".join(REQUIREMENTS) + "\n")
    return python


class StandIn:
    """mongoeco's wire-protocol server in a child process."""

    def __init__(self) -> None:
        python = ensure_venv()
        self.process = subprocess.Popen(
            [str(python), "-c", SERVER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = _readline(self.process, 120)
        if not line.startswith("READY "):
            err = self.process.stderr.read() if self.process.stderr else ""
            self.stop()
            raise MongoUnavailable(f"mongoeco did not start: {line!r} {err[-2000:]}")
        self.port = int(line.split()[1])
        self.uri = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def stop(self) -> None:
        p = self.process
        if p.poll() is None:
            if p.stdin is not None:
                p.stdin.close()  # the server exits when its stdin closes
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait(10)


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        result.append(process.stdout.readline())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    return result[0].strip() if result else ""


_stand_in: StandIn | None = None
_failure: str | None = None


def _stop_stand_in() -> None:
    global _stand_in
    if _stand_in is not None:
        _stand_in.stop()
        _stand_in = None


def server_uri() -> str:
    """The URI of the server the tests use; fails without one."""
    global _stand_in, _failure
    uri = os.environ.get(ENV_URI)
    if uri:
        return uri
    if _stand_in is None and _failure is None:
        try:
            _stand_in = StandIn()
            atexit.register(_stop_stand_in)
        except MongoUnavailable as err:
            _failure = str(err)
    if _stand_in is None:
        # The project's machines carry Python 3.13 for the stand-in: its absence is a
        # failure to report, never a reason to pass with the MongoDB store untested.
        pytest.fail(f"no MongoDB for the tests: {_failure}")
    return _stand_in.uri


def uses_stand_in() -> bool:
    return not os.environ.get(ENV_URI)


@pytest.fixture(scope="session")
def mongodb_uri() -> Iterator[str]:
    """The test server's URI; the stand-in is stopped at the end of the session."""
    yield server_uri()
    _stop_stand_in()


@pytest.fixture
async def store(mongodb_uri: str) -> AsyncIterator[Store]:
    """A store on a throwaway database of the test server: import it into a module to
    run that module's tests (written for the ``store`` fixture) on MongoDB."""
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def make_store(database: str | None = None) -> Store:
    """A store on a fresh database of the test server, dropped on close."""
    from fhir_server.storage.mongodb.store import MongoStore

    class ThrowawayMongoStore(MongoStore):
        async def close(self) -> None:
            if self._client is not None:
                await self._client.drop_database(self.db.name)
            await super().close()

    return ThrowawayMongoStore(server_uri(), database or f"fhir_test_{uuid.uuid4().hex[:12]}")


async def store_factory(tmp: Path) -> Store:
    """For ``STORE_FACTORIES``: the contract suite on MongoDB."""
    return make_store()


if __name__ == "__main__":  # start the stand-in by hand: python -m tests.storage.mongo_support
    server = StandIn()
    print(server.uri, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()
