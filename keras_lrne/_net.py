"""Bounded network checks, so that an unreachable host fails fast with a clear error."""


def probe(address, timeout):
    """True if a TCP connection to `address` (host, port) opens within `timeout` seconds."""
    import socket
    import threading

    result = []

    def connect():  # name resolution has no timeout of its own: run it in a thread
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
