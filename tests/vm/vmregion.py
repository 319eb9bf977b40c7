"""Offsets and data shared by test_region_vm.py (host) and guest_region.py (guest).

Odd offsets and lengths make the strict copy path do its unaligned head and
tail as well as the aligned middle.
"""
import random

SIZE = 1 << 20
A_OFF, A_LEN = 131072 + 3, 65536 + 5         # host -> guest, written before boot
B_OFF, B_LEN = 262144 + 1, 40000 + 7         # guest -> host through resource2
C_OFF, C_LEN = 524288 + 5, 30000 + 3         # guest -> host through /dev/mem
HOST_FLAG, GUEST_FLAG = 0, 64                # echo round numbers, one writer each
PAYLOAD_OFF, REPLY_OFF = 4096, 4096 + 65536  # echo payload and its copy back
ECHO_ROUNDS = 12


def echo_length(round_no):
    """0, 1, 7, 8, ... bytes: sizes around word boundaries, up to 60 KiB."""
    return [0, 1, 7, 8, 9, 63, 64, 65, 4095, 4096, 4097, 61440][round_no - 1]


def pattern(seed, n):
    return random.Random(seed).randbytes(n)
