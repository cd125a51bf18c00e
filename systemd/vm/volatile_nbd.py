#!/usr/bin/env python3
"""A disk with a volatile write cache, for power-cut tests: an NBD server.

    volatile_nbd.py IMAGE SOCKET

serves the raw file IMAGE over the Unix socket SOCKET to one client at a
time (QEMU: -blockdev driver=nbd,server.type=unix,server.path=SOCKET,...).
Every WRITE goes to an overlay in this process's memory (4 KiB blocks); a
READ sees the overlay over the file; a FLUSH writes the overlay to IMAGE
and fsyncs it; a write with FUA is written to IMAGE and fsynced at once.
Kill this process (the power cut) and every write not yet flushed is gone:
a disk that keeps nothing of its cache, the worst a real one may do.
Stdlib only. Protocol: the fixed newstyle handshake (NBD_OPT_GO, INFO,
EXPORT_NAME), simple replies, READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, DISC
(https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
"""

import os
import signal
import socket
import struct
import sys
import time

BLOCK = 4096

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
FLAG_C_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_INFO = 6
OPT_GO = 7

REP_ACK = 1
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
INFO_EXPORT = 0

TF_HAS_FLAGS = 1 << 0
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TRANSMISSION_FLAGS = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 6
CMD_FLAG_FUA = 1 << 0

EIO, EINVAL = 5, 22


class Closed(Exception):
    pass


def recv_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise Closed()
        buf += chunk
    return bytes(buf)


class VolatileDisk:
    """The file IMAGE under an overlay of unflushed 4 KiB blocks."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        self.overlay = {}  # block number -> bytearray(BLOCK), not yet durable

    def _block(self, n):
        b = self.overlay.get(n)
        if b is None:
            b = bytearray(os.pread(self.fd, BLOCK, n * BLOCK).ljust(BLOCK, b"\0"))
            self.overlay[n] = b
        return b

    def read(self, offset, length):
        data = bytearray(os.pread(self.fd, length, offset).ljust(length, b"\0"))
        if self.overlay:
            for n in range(offset // BLOCK, (offset + length - 1) // BLOCK + 1):
                b = self.overlay.get(n)
                if b is None:
                    continue
                lo, hi = max(offset, n * BLOCK), min(offset + length, (n + 1) * BLOCK)
                data[lo - offset : hi - offset] = b[lo - n * BLOCK : hi - n * BLOCK]
        return bytes(data)

    def write(self, offset, data, fua=False):
        end = offset + len(data)
        touched = range(offset // BLOCK, (end - 1) // BLOCK + 1)
        for n in touched:
            lo, hi = max(offset, n * BLOCK), min(end, (n + 1) * BLOCK)
            self._block(n)[lo - n * BLOCK : hi - n * BLOCK] = data[lo - offset : hi - offset]
        if fua:
            self._persist(touched)
            log("fua", len(touched))

    def _persist(self, blocks):
        for n in sorted(blocks):
            b = self.overlay.pop(n, None)
            if b is not None:
                size = min(BLOCK, self.size - n * BLOCK)
                os.pwrite(self.fd, bytes(b[:size]), n * BLOCK)
        os.fsync(self.fd)

    def flush(self):
        blocks = len(self.overlay)
        self._persist(list(self.overlay))
        log("flush", blocks)


def log(what, blocks):
    """One line on stderr per durable point: the time, and how many 4 KiB
    blocks it made durable (a cut loses those written after the last one)."""
    print(f"{time.time():.3f} {what} {blocks}", file=sys.stderr, flush=True)


def handshake(conn, disk):
    """Negotiate; True when the client chose the export (transmission follows)."""
    conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
    (client_flags,) = struct.unpack(">I", recv_exact(conn, 4))
    no_zeroes = bool(client_flags & FLAG_C_NO_ZEROES)
    while True:
        magic, opt, length = struct.unpack(">QII", recv_exact(conn, 16))
        if magic != IHAVEOPT:
            return False
        data = recv_exact(conn, length)

        def reply(kind, payload=b""):
            conn.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, kind, len(payload)) + payload)

        if opt == OPT_EXPORT_NAME:
            conn.sendall(struct.pack(">QH", disk.size, TRANSMISSION_FLAGS) + (b"" if no_zeroes else b"\0" * 124))
            return True
        if opt in (OPT_INFO, OPT_GO):
            reply(REP_INFO, struct.pack(">HQH", INFO_EXPORT, disk.size, TRANSMISSION_FLAGS))
            reply(REP_ACK)
            if opt == OPT_GO:
                return True
        elif opt == OPT_ABORT:
            reply(REP_ACK)
            return False
        else:  # structured replies, meta contexts, TLS, lists: not offered
            reply(REP_ERR_UNSUP)


def serve(conn, disk):
    def reply(handle, error=0, payload=b""):
        conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle) + payload)

    while True:
        magic, flags, cmd, handle, offset, length = struct.unpack(">IHHQQI", recv_exact(conn, 28))
        if magic != REQUEST_MAGIC:
            return
        data = recv_exact(conn, length) if cmd == CMD_WRITE else b""
        if cmd == CMD_DISC:
            return
        if cmd == CMD_FLUSH:
            disk.flush()
            reply(handle)
            continue
        if offset + length > disk.size:
            reply(handle, EINVAL)
            continue
        try:
            if cmd == CMD_READ:
                reply(handle, 0, disk.read(offset, length))
            elif cmd == CMD_WRITE:
                disk.write(offset, data, bool(flags & CMD_FLAG_FUA))
                reply(handle)
            elif cmd == CMD_WRITE_ZEROES:
                if length:
                    disk.write(offset, b"\0" * length, bool(flags & CMD_FLAG_FUA))
                reply(handle)
            elif cmd == CMD_TRIM:  # a hint: keeping the data is allowed
                reply(handle)
            else:
                reply(handle, EINVAL)
        except OSError:
            reply(handle, EIO)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: volatile_nbd.py IMAGE SOCKET")
    image, path = sys.argv[1], sys.argv[2]
    disk = VolatileDisk(image)
    # An orderly stop (SIGTERM) flushes, as a disk does at shutdown; a power
    # cut is SIGKILL, and the overlay goes with the process.
    signal.signal(signal.SIGTERM, lambda *_: (disk.flush(), sys.exit(0)))
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    while True:
        conn, _ = server.accept()
        try:
            if handshake(conn, disk):
                serve(conn, disk)
        except (Closed, ConnectionError):
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
