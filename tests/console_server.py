"""A ser2net-like TCP console server on loopback, for the console capture tests."""

from __future__ import annotations

import socket
import threading


class ConsoleServer:
    """A ser2net-like TCP console: every connection gets what :meth:`say`
    sends from then on."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.connections = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.clients.append(client)
                self.connections += 1

    def say(self, text: str) -> None:
        with self.lock:
            for client in list(self.clients):
                try:
                    client.sendall(text.encode())
                except OSError:
                    self.clients.remove(client)

    def drop_clients(self) -> None:
        with self.lock:
            for client in self.clients:
                client.close()
            self.clients.clear()

    def close(self) -> None:
        self.sock.close()
        self.drop_clients()
