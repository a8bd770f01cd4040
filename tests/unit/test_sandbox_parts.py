"""The sandbox's pure parts: plain-data transfer (what a program's answer can be) and the seccomp filter (installed
in a forked child of this test, as the harness does, and probed with real system calls)."""

import ctypes
import errno
import fcntl
import math
import os
import platform
import re
import resource
import signal
import socket
import struct
import threading
from collections import Counter, OrderedDict, defaultdict, namedtuple
from enum import IntEnum
from pathlib import Path

import pytest

from ponder.rewards import plain, seccomp
from ponder.rewards.plain import decode, encode


class Colour(IntEnum):
    RED = 1


VALUES = [None, True, False, 0, -7, 2 ** 64, -(3 ** 200), 1.5, -0.0, float("inf"), float("-inf"), 1e-320, "",
          "é\u2603\ud800", b"", b"\x00\xff", 3 - 4j, [], (), (1,), {}, set(), frozenset(), {1: [2, (3, "4")]},
          {(1, 2): frozenset({3})}, [{"a": {1, 2}}, (None,)], [[[[]]]]]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_every_builtin_type_round_trips_exactly(value):
    back = decode(encode(value))
    assert back == value and type(back) is type(value) and repr(back) == repr(value)


def test_nan_round_trips():
    assert math.isnan(decode(encode(float("nan"))))


def test_subclasses_of_builtins_travel_as_the_builtin_they_are():
    point = namedtuple("Point", "x y")(1, 2)
    for value, expected in ((Counter("aab"), {"a": 2, "b": 1}), (point, (1, 2)), (OrderedDict(a=1), {"a": 1}),
                            (defaultdict(int, a=1), {"a": 1}), (Colour.RED, 1)):
        back = decode(encode(value))
        assert back == expected and type(back) is type(expected)


def test_a_lying_subclass_is_sent_as_its_real_value():
    class Liar(int):
        def __eq__(self, other):
            return True

        def __repr__(self):
            return "42"

    assert decode(encode(Liar(3))) == 3 and type(decode(encode(Liar(3)))) is int


@pytest.mark.parametrize("value", [object(), print, Path("/"), bytearray(b"x"), range(3), iter([1]), {"k": object()}])
def test_anything_else_is_refused(value):
    with pytest.raises(TypeError, match="not plain data"):
        encode(value)


def test_cycles_and_deep_nesting_are_refused():
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="too deep"):
        encode(cycle)


def test_whatever_decodes_can_be_sent_back_inside_the_arguments_of_a_call():
    """A program's value that decoded but could not be passed back would switch the test to its inexact form."""
    deepest = 0
    for _ in range(plain.MAX_DEPTH - 1):
        deepest = [deepest]
    assert encode([decode(encode(deepest))]) and encode({"k": decode(encode(deepest))})
    with pytest.raises(ValueError, match="not plain data"):
        decode(encode([deepest]))


def test_sets_and_dicts_of_colliding_hashes_are_refused():
    colliding = [(2 ** 61 - 1) * i for i in range(plain.MAX_COLLISIONS + 1)]
    for value in (set(colliding), frozenset(colliding), dict.fromkeys(colliding)):
        with pytest.raises(ValueError, match="not plain data"):
            decode(encode(value))
    assert decode(encode(set(colliding[:-1]))) == set(colliding[:-1])


@pytest.mark.parametrize("text", [
    '{"t": 1}', '{"d": [[1]]}', '{"z": []}', '{"t": [], "s": []}', '{"b": "!!"}', '{"c": [1, 2]}', '{"x": "1e999"}',
    '{"s": [[1]]}', "[" * 150 + "]" * 150, '{"i": "xyz"}', "1" * 5000, "not json", '{"x": "nan", "y": 1}',
])
def test_untrusted_text_decodes_to_plain_data_or_is_refused(text):
    with pytest.raises(ValueError, match="not plain data"):
        decode(text)


def _headers() -> dict[str, Path]:
    return {"x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
            "aarch64": Path("/usr/include/asm-generic/unistd.h")}


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHES))
def test_system_call_numbers_match_the_kernel_headers(machine):
    header = _headers()[machine]
    if not header.exists():
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    text = header.read_text()
    column = seccomp.ARCHES[machine][0]
    for name, numbers in seccomp.SYSCALLS.items():
        found = re.search(rf"#define __NR(?:3264)?_{name}\s+(\d+)\b", text)
        assert found and int(found.group(1)) == numbers[column], name


def test_every_jump_lands_inside_the_program():
    for machine in seccomp.ARCHES:
        code = seccomp.program(protect=(2, 7), machine=machine)
        instructions = [code[i:i + 8] for i in range(0, len(code), 8)]
        for i, raw in enumerate(instructions):
            op, jt, jf, _ = struct.unpack("=HBBI", raw)
            if op & 0x07 == 0x05:  # BPF_JMP
                assert i + 1 + max(jt, jf) < len(instructions)
        assert struct.unpack("=HBBI", instructions[-1])[0] == 0x06  # ends with a return


def _in_filtered_child(probe) -> dict:
    """Fork, install the filter, run `probe()` (a dict of results) and send it back."""
    if platform.machine() not in seccomp.ARCHES:
        pytest.skip(f"no filter for {platform.machine()}")
    prepared = seccomp.prepare(protect=(os.getpid(),))  # as the zygote protects itself: here, this test process
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            seccomp.install(prepared)
            os.write(write_fd, repr(probe()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 65536):
        data += chunk
    os.close(read_fd)
    os.waitpid(pid, 0)
    return eval(data.decode())  # noqa: S307 - our own child's repr of a dict of strs


def _errno_of(call) -> str:
    try:
        call()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _syscall(name: str, *args) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    number = seccomp.SYSCALLS[name][seccomp.ARCHES[platform.machine()][0]]
    if libc.syscall(number, *[ctypes.c_long(a) for a in args]) == -1:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    return "ok"


def test_the_filter_denies_reaching_other_processes_and_allows_ordinary_work():
    parent = os.getpid()

    def probe():
        sock = socket.socket()
        return {
            "ptrace": _syscall("ptrace", 16, parent, 0, 0),
            "pidfd_open": _syscall("pidfd_open", parent, 0),
            "pidfd_getfd": _syscall("pidfd_getfd", 3, 0, 0),
            "process_vm_readv": _syscall("process_vm_readv", parent, 0, 0, 0, 0, 0),
            "kill init": _syscall("kill", 1, 0), "kill -1": _syscall("kill", -1, 0),
            "kill protected": _syscall("kill", parent, 0), "kill its group": _syscall("kill", -parent, 0),
            "kill 1 + high bits": _syscall("kill", (1 << 32) | 1, 0),
            "tgkill protected": _syscall("tgkill", parent, parent, 0),
            "prlimit other": _errno_of(lambda: resource.prlimit(parent, resource.RLIMIT_NOFILE, (5, 5))),
            "nice user": _errno_of(lambda: os.setpriority(os.PRIO_USER, 0, 5)),
            "nice other": _errno_of(lambda: os.setpriority(os.PRIO_PROCESS, parent, 5)),
            "affinity other": _errno_of(lambda: os.sched_setaffinity(parent, {0})),
            "scheduler other": _errno_of(lambda: os.sched_setscheduler(parent, os.SCHED_IDLE, os.sched_param(0))),
            "keyctl": _syscall("keyctl", 1, -3, 0), "add_key": _syscall("add_key", 0, 0, 0, 0, -4),
            "mq_open": _syscall("mq_open", 0, 0, 0, 0), "ioprio_set": _syscall("ioprio_set", 1, 0, 0),
            "unshare": _syscall("unshare", 0x20000),
            "F_SETOWN": _errno_of(lambda: fcntl.fcntl(sock, fcntl.F_SETOWN, parent)),
            "nice itself": _errno_of(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)),
            "affinity itself": _errno_of(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
            "SIGCHLD ignored": _errno_of(lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN)),
            # allowed: its own limits, threads, forks, signals to itself, other signals' handlers, reading SIGCHLD's
            "setrlimit self": _errno_of(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))),
            "kill self": _errno_of(lambda: os.kill(os.getpid(), 0)),
            "SIGUSR1 handler self": _errno_of(lambda: signal.signal(signal.SIGUSR1, lambda *a: None)),
            "SIGCHLD read self": _errno_of(lambda: signal.getsignal(signal.SIGCHLD)),
            "thread": _errno_of(lambda: threading.Thread(target=int).start()),
        }

    results = _in_filtered_child(probe)
    allowed = {"setrlimit self", "kill self", "SIGUSR1 handler self", "SIGCHLD read self", "thread"}
    denied = [k for k in results if k not in allowed]
    assert {k: results[k] for k in denied} == {k: "EPERM" for k in denied}
    assert {k: results[k] for k in results if k not in denied} == {k: "ok" for k in results if k not in denied}


def test_a_forked_child_under_the_filter_can_fork_and_exec():
    def probe():
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["true"])
        return {"exit": os.waitpid(pid, 0)[1]}

    assert _in_filtered_child(probe) == {"exit": 0}
