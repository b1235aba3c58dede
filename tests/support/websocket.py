#!/usr/bin/env python3
"""A minimal RFC 6455 WebSocket echo server and client, for the HTTP proxy's upgrade test.

serve PORT  listen on 127.0.0.1:PORT (0: any), print "listening PORT", answer each
            handshake with 101 and echo every text frame as "echo: TEXT"; a close frame
            is answered with the same code, then the connection is closed.
talk PORT   handshake through 127.0.0.1:PORT, send "one", "two" and 70000 x's, then a
            close (1000); print what came back as JSON.
"""
import base64, hashlib, json, os, socket, struct, sys, threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_for(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


class Conn:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return lines[0], headers

    def frame(self):
        b0, b1 = self.exact(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self.exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self.exact(8))
        mask = self.exact(4) if b1 & 0x80 else None
        payload = self.exact(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return b0 & 0x0F, payload

    def send(self, opcode, payload, masked):
        head = bytes([0x80 | opcode])
        bit = 0x80 if masked else 0
        n = len(payload)
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([bit | 127]) + struct.pack("!Q", n)
        if masked:
            mask = os.urandom(4)
            head += mask
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + payload)


def serve_one(sock):
    conn = Conn(sock)
    try:
        _, headers = conn.head()
        if headers.get("upgrade", "").lower() != "websocket" or "sec-websocket-key" not in headers:
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_for(headers['sec-websocket-key'])}\r\n\r\n"
            ).encode()
        )
        while True:
            opcode, payload = conn.frame()
            if opcode == 0x8:
                conn.send(0x8, payload[:2], masked=False)
                return
            if opcode == 0x1:
                conn.send(0x1, b"echo: " + payload, masked=False)
    except (EOFError, OSError):
        pass
    finally:
        sock.close()


def serve(port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    print("listening", listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve_one, args=(sock,), daemon=True).start()


def talk(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /chat HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    conn = Conn(sock)
    status_line, headers = conn.head()
    out = {
        "status": int(status_line.split()[1]),
        "upgrade": headers.get("upgrade", "").lower(),
        "accept_ok": headers.get("sec-websocket-accept") == accept_for(key),
        "echoes": [],
    }
    if out["status"] == 101:
        for text in ["one", "two", "x" * 70000]:
            conn.send(0x1, text.encode(), masked=True)
            opcode, payload = conn.frame()
            out["echoes"].append(payload.decode())
        conn.send(0x8, struct.pack("!H", 1000), masked=True)
        opcode, payload = conn.frame()
        out["close_code"] = struct.unpack("!H", payload[:2])[0] if opcode == 0x8 else None
        try:
            conn.fill()
            out["closed_after"] = False
        except EOFError:
            out["closed_after"] = True
    print(json.dumps(out))


if __name__ == "__main__":
    {"serve": serve, "talk": talk}[sys.argv[1]](int(sys.argv[2]))
