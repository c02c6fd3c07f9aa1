"""A TCP proxy on 127.0.0.1 in front of a real server, which a test can make go silent.

A database that is down is refused at once; one that hangs (a full disk, a stuck lock, a
half-open connection) accepts, reads, and never answers. ``stall()`` makes the proxy do that:
the connections stay open, every byte from either side is swallowed. ``resume()`` undoes it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any


class StallProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.stalled = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self.accepted = 0  # connections made to it: how many times it was asked
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def stall(self) -> None:
        self.stalled.set()

    def resume(self) -> None:
        self.stalled.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.stalled.is_set():
                    dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> StallProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
