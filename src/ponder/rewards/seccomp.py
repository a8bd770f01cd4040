"""The seccomp filter the sandbox puts on every untrusted program. Standard library only (ctypes).

The sandbox's zygote (`sandbox_runner.py`, which gets this file's source prepended) installs it in each child it
forks for a program, before the program's first line, so the program and everything it starts live under it; the
harness and the zygote do not. It closes the routes by which a program could reach another process's state while
sharing its uid:

  - reading or writing another process: ptrace, process_vm_readv/writev, pidfd_open/pidfd_getfd/pidfd_send_signal,
    kcmp, perf_event_open, bpf, userfaultfd, io_uring (its own path around these checks);
  - signalling the harness (pid 1, the sandbox's init) or the zygote: kill, tkill, tgkill, rt_(tg)sigqueueinfo to
    those pids, their process groups or every process (-1), and F_SETOWN-style async signal delivery;
  - changing another process's limits: prlimit64 on any pid but the caller's own (0), migrate_pages, move_pages,
    process_madvise;
  - scheduling, its own included: setpriority (nice), sched_set{affinity,scheduler,param,attr}, ioprio_set. Another
    process's would poison it; its own would let a program demote itself behind other work until its case is
    judged starved by the machine (a masked sample) rather than slow;
  - hiding CPU time: setting SIGCHLD's action (ignoring it makes the kernel reap children unwaited, and the time they
    used would be counted nowhere);
  - state shared beyond a process's life: kernel keyrings (keyctl, add_key, request_key) and POSIX message queues;
  - namespaces and mounts: unshare, setns, mount, umount2, pivot_root, chroot, open_by_handle_at.

Denied calls fail with EPERM (clone3 with ENOSYS, so threads fall back to clone); a call from another ABI (x32, i386)
kills the process. x86_64 and aarch64; `install()` raises OSError elsewhere.
"""

import ctypes
import errno
import platform
import struct

# (x86_64, aarch64) system call numbers, from the kernel's unistd headers (tests compare them where those exist)
SYSCALLS = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_open": (434, 434), "pidfd_getfd": (438, 438), "pidfd_send_signal": (424, 424), "kcmp": (312, 272),
    "perf_event_open": (298, 241), "bpf": (321, 280), "userfaultfd": (323, 282), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "keyctl": (250, 219), "add_key": (248, 217),
    "request_key": (249, 218), "mq_open": (240, 180), "mq_unlink": (241, 181), "mq_timedsend": (242, 182),
    "mq_timedreceive": (243, 183), "mq_notify": (244, 184), "mq_getsetattr": (245, 185), "ioprio_set": (251, 30),
    "migrate_pages": (256, 238), "move_pages": (279, 239), "process_madvise": (440, 440),
    "process_mrelease": (448, 448), "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40),
    "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51), "open_by_handle_at": (304, 265),
    "clone3": (435, 435), "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138), "rt_tgsigqueueinfo": (297, 240), "prlimit64": (302, 261),
    "setpriority": (141, 140), "sched_setaffinity": (203, 122), "sched_setscheduler": (144, 119),
    "sched_setparam": (142, 118), "sched_setattr": (314, 274), "fcntl": (72, 25), "ioctl": (16, 29),
    "rt_sigaction": (13, 134),
}
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column in SYSCALLS, AUDIT_ARCH_*

DENY = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "kcmp",
        "perf_event_open", "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl",
        "add_key", "request_key", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
        "mq_getsetattr", "ioprio_set", "migrate_pages", "move_pages", "process_madvise", "process_mrelease",
        "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_by_handle_at", "setpriority",
        "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr")
NOT_ZERO, PROTECTED = "not 0", "protected"
# system call -> conditions (argument index, denied values of its low 32 bits); any condition met denies the call.
# PROTECTED: the pids given to `program` (each also as a negative process group), 1 (init) and -1 (everyone).
DENY_IF = {
    "kill": [(0, PROTECTED)], "tkill": [(0, PROTECTED)], "tgkill": [(0, PROTECTED)],
    "rt_sigqueueinfo": [(0, PROTECTED)], "rt_tgsigqueueinfo": [(0, PROTECTED)],
    "fcntl": [(1, (8, 15))],  # F_SETOWN, F_SETOWN_EX: SIGIO/SIGURG sent to a pid of the program's choosing
    "ioctl": [(1, (0x8901, 0x8902, 0x5412))],  # FIOSETOWN, SIOCSPGRP, TIOCSTI
    "prlimit64": [(0, NOT_ZERO)],  # its own limits only
}

_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_NR, _ARCH = 0, 4
_TO_DENY = "deny"  # a jump target, resolved per block


def program(protect=(), machine: str = platform.machine()) -> bytes:
    """The filter as `struct sock_filter` bytes for this machine's ABI, with signals to init and to the pids in
    `protect` (and their process groups) denied; OSError for an architecture it lacks."""
    if machine not in ARCHES:
        raise OSError(f"no seccomp filter for {machine}")
    pids = sorted({1, 0xFFFFFFFF} | set(protect) | {-p & 0xFFFFFFFF for p in protect})
    column, audit_arch = ARCHES[machine]
    nr = {name: numbers[column] for name, numbers in SYSCALLS.items()}
    code = [(_LD_W_ABS, 0, 0, _ARCH), (_JEQ_K, 1, 0, audit_arch), (_RET_K, 0, 0, _KILL_PROCESS),
            (_LD_W_ABS, 0, 0, _NR)]
    if machine == "x86_64":  # the x32 ABI sets bit 30 of the number: the same calls under other numbers
        code += [(_JGE_K, 0, 1, 0x40000000), (_RET_K, 0, 0, _KILL_PROCESS)]
    for name in DENY:
        code += [(_JEQ_K, 0, 1, nr[name]), (_RET_K, 0, 0, _ERRNO | errno.EPERM)]
    code += [(_JEQ_K, 0, 1, nr["clone3"]), (_RET_K, 0, 0, _ERRNO | errno.ENOSYS)]
    for name, conditions in DENY_IF.items():
        block = _conditions([(i, pids if values == PROTECTED else values) for i, values in conditions])
        code += [(_JEQ_K, 0, len(block), nr[name]), *block]  # not this call: skip the block (A still holds nr)
    code += [(_JEQ_K, 0, len(_SIGCHLD_ACTION), nr["rt_sigaction"]), *_SIGCHLD_ACTION]
    code.append((_RET_K, 0, 0, _ALLOW))
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in code)


# rt_sigaction(SIGCHLD, act != NULL): ignoring SIGCHLD (or SA_NOCLDWAIT) makes the kernel reap children unwaited, and
# their CPU time would then be counted nowhere; reading the disposition (act == NULL) stays allowed
_SIGCHLD_ACTION = [
    (_LD_W_ABS, 0, 0, 16), (_JEQ_K, 0, 4, 17),  # signal number: not SIGCHLD -> allow
    (_LD_W_ABS, 0, 0, 24), (_JEQ_K, 0, 3, 0),  # act, low 32 bits: not 0 -> deny
    (_LD_W_ABS, 0, 0, 28), (_JEQ_K, 0, 1, 0),  # act, high 32 bits: 0 -> allow, else deny
    (_RET_K, 0, 0, _ALLOW), (_RET_K, 0, 0, _ERRNO | errno.EPERM),
]


def _conditions(conditions) -> list:
    """Load each argument and compare it; a match jumps to the block's last instruction (deny), else allow."""
    block = []
    for index, values in conditions:
        block.append((_LD_W_ABS, 0, 0, 16 + 8 * index))  # seccomp_data.args[index], low 32 bits (little-endian)
        if values == NOT_ZERO:
            block.append((_JEQ_K, 0, _TO_DENY, 0))
        else:
            block += [(_JEQ_K, _TO_DENY, 0, value) for value in values]
    block += [(_RET_K, 0, 0, _ALLOW), (_RET_K, 0, 0, _ERRNO | errno.EPERM)]
    deny = len(block) - 1
    return [(op, deny - i - 1 if jt == _TO_DENY else jt, deny - i - 1 if jf == _TO_DENY else jf, k)
            for i, (op, jt, jf, k) in enumerate(block)]


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def prepare(protect=()):
    """What `install` needs, built before fork: (libc, the program's buffer, its sock_fprog)."""
    libc = ctypes.CDLL(None, use_errno=True)
    code = program(protect)
    buffer = ctypes.create_string_buffer(code, len(code))
    return libc, buffer, _Fprog(len(code) // 8, ctypes.addressof(buffer))


def install(prepared) -> None:
    """Put the filter on the calling process (and what it starts); OSError if the kernel refuses."""
    libc, _, fprog = prepared
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: required to filter without CAP_SYS_ADMIN
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
