#!/usr/bin/env python3
"""A sync worker gone wrong, for test_sync.py: lockerd runs it instead of its own
worker when LOCKERD_SYNC_WORKER names it. It reads the configuration message and
answers with bytes that are not a valid message (a version-1 SM_ITEM_RES header
whose one field runs past the end); lockerd must kill it and start another with
back-off."""
import socket
import sys

fd = int(sys.argv[2]) if len(sys.argv) > 2 else 3
s = socket.socket(fileno=fd)
s.recv(1 << 18)
s.send(bytes([1, 5, 1, 0, 17, 0, 255, 255, 0, 0]) + b"r-1")
s.recv(1 << 18)  # until lockerd closes or kills us
