"""A local sandbox for model-written code: bubblewrap namespaces, a seccomp filter, resource limits, CPU-time verdicts,
and a warm pool whose sandboxes are proven clean between jobs or discarded.

Threat model. The program is hostile: it was written by a policy being optimised to make a number go up. It may loop,
sleep, allocate, fork, fill disks, print without end, try the network, read secrets, tamper with the harness or with
the sandbox it will share with later programs, forge results, or return objects that lie when compared. Contained:
  - Files: the root is empty but for /usr (and its /bin, /lib links) read-only, a fresh /proc and a minimal /dev. /etc,
    /root, /home, the project and the venv are not there at all. Writable: /work and /tmp, private tmpfs capped at
    `file_mb` each, emptied after every job.
  - Identity and processes: new user, pid, ipc, uts, cgroup and network namespaces; uid/gid 65534 inside, and as the
    real uid outside when the parent is root (so RLIMIT_NPROC applies); all capabilities dropped; no nested user
    namespaces; a new session. The program sees only its own job's processes, the harness (the namespace's init,
    pid 1) and the zygote that forked it; when the harness dies (parent death) the kernel kills everything inside.
  - Reaching other processes: each program runs in a child forked from a pristine, undumpable zygote interpreter that
    never sees job data, under a seccomp filter (`seccomp.py`) that denies ptrace, pidfd_getfd, process_vm_readv/writev
    and their kin, signals to the harness and the zygote, and changing any other process's limits or scheduling;
    keyrings and POSIX queues are denied too.
  - The result channel: two pipes on fds 3 and 4 that only the undumpable harness holds. Every reply carries a
    per-job nonce and a sequence number; anything else is refused.
  - Environment: bubblewrap itself starts with only PATH, so no secret of the parent is readable inside.
  - Network: only a loopback of its own; no route out, no DNS, no host loopback.
  - Resources: RLIMIT_AS, CPU, NPROC, FSIZE, NOFILE and CORE with soft = hard, cgroup-v1 `pids.max` and a CPU quota
    where /sys/fs/cgroup/{pids,cpu} are writable, CPU time per test case, wall backstops, output read through a cap.
  - Results: nothing the program says is believed but its answer. Return values come back as plain data (`plain.py`)
    and every test expression is evaluated in the parent on rebuilt builtins (`rewards/code.py`); expected values
    never enter the sandbox.
  - Reuse: after each job the harness kills every process, removes IPC objects, empties /work and /tmp, and compares
    its own state (limits, nice, affinity, scheduler, I/O priority, keyrings, modes of /work and /tmp, ...) with its
    start; any change discards the sandbox, so a poisoning program can affect at most its own job.
  - Load: "too slow" is decided by CPU time. A case killed by its wall backstop while it was waiting for a CPU held by
    others is an infrastructure failure (SandboxError: the sample is masked), not a 0.
Not contained: kernel exploits beyond what the filter removes, side channels, and contention (a program may use its
sandbox's CPU quota and memory up to the limits, which slows programs in other sandboxes on the same cores).

An infrastructure failure (bubblewrap missing, a sandbox that never says it is ready, a failed self-test, a harness
that stops answering, a starved case) raises `SandboxError`; the reward pool turns it into a masked sample, never a 0.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from ponder.rewards.sandbox_host import tasks_of, why_bwrap_failed

SANDBOX_UID = 65534  # nobody
PYTHON = "/usr/bin/python3"  # the system interpreter under /usr: stdlib only, nothing from the project's venv
_HERE = Path(__file__).parent
HARNESS = (_HERE / "sandbox_harness.py").read_text()
RUNNER = "".join((_HERE / name).read_text() for name in ("seccomp.py", "plain.py", "sandbox_runner.py"))
CGROUP_ROOT = Path("/sys/fs/cgroup")  # cgroup v1 controllers: pids, cpu
START_TIMEOUT_S = 20.0  # a cold start on a loaded 2-core machine; an idle one takes ~0.1 s
HARNESS_CPU_S = 600  # RLIMIT_CPU of the harness over its whole life; each child gets `cpu_s`
REPLY_MARGIN_S = 10.0  # beyond a case's own backstop: the harness's kill-and-reap, a fresh child's start


class SandboxError(RuntimeError):
    """The sandbox could not run the program: an infrastructure failure, not the program's fault."""


@dataclass(frozen=True)
class Limits:
    case_cpu_s: float = 1.0  # CPU time one test case may use: over it, the case fails as too slow
    case_timeout_s: float = 5.0  # wall backstop of one case: sleeping there fails it, waiting for a CPU masks it
    timeout_s: float = 30.0  # wall backstop of a job; the program's own time is capped at half of it
    memory_mb: int = 512  # address space per process
    cpu_s: int = 10  # CPU seconds per process (RLIMIT_CPU), across a job's cases
    processes: int = 256  # RLIMIT_NPROC: tasks of all sandboxes together (beyond the caller's own, when not root)
    pids: int = 24  # processes and threads per sandbox (cgroup pids.max, where available)
    cpus: float = 1.0  # CPU quota per sandbox (cgroup cpu.cfs_quota_us, where available)
    file_mb: int = 16  # largest file, and the size of /work and of /tmp
    open_files: int = 64
    output_kb: int = 1024  # a case's reply or stdout; more fails the case
    jobs_per_sandbox: int = 64  # a warm sandbox is proven clean after each job, and replaced after this many

    def check(self) -> None:
        """ValueError naming the fix for limits that contradict each other."""
        if self.case_timeout_s > self.timeout_s / 4:
            raise ValueError(f"case_timeout_s ({self.case_timeout_s}) must be at most a quarter of timeout_s "
                             f"({self.timeout_s}): the job's own time is capped at half of timeout_s, and the last "
                             "case may start just before that; raise timeout_s or lower case_timeout_s")
        if self.case_cpu_s >= self.case_timeout_s:
            raise ValueError(f"case_cpu_s ({self.case_cpu_s}) must be below case_timeout_s ({self.case_timeout_s}), "
                             "the wall backstop")

    def for_harness(self) -> dict[str, Any]:
        return {"case_cpu_s": self.case_cpu_s, "case_timeout_s": self.case_timeout_s, "budget_s": self.timeout_s / 2,
                "cpu_s": self.cpu_s, "output_bytes": self.output_kb * 1024}


@dataclass(frozen=True)
class Reply:
    status: str  # ok, error, timeout, output_limit, not_plain, died (starved, unavailable: raised as SandboxError)
    body: str = ""  # ok: the plain value's JSON (call) or stdout (stdio); otherwise what went wrong
    wall_s: float = 0.0


def bwrap_command(limits: Limits) -> list[str]:
    size = str(limits.file_mb << 20)
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1", "--uid", str(SANDBOX_UID),
           "--gid", str(SANDBOX_UID), "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname",
           "sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
           "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--mqueue", "/dev/mqueue",
           "--size", size, "--tmpfs", "/work", "--size", size, "--tmpfs", "/tmp", "--chdir", "/work"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):  # merged-/usr systems link these; others get them read-only
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    # bubblewrap builds / and /dev (with /dev/shm) as uncapped tmpfs: read-only once everything is mounted
    return cmd + ["--remount-ro", "/dev", "--remount-ro", "/", PYTHON, "-I", "-S", "-c", HARNESS, RUNNER,
                  json.dumps(limits.for_harness())]


class _Cgroups:
    """cgroup-v1 groups for one sandbox: `pids.max` and a CPU quota, each where its hierarchy is writable."""

    def __init__(self, limits: Limits):
        name = uuid.uuid4().hex[:12]
        settings = {"pids": {"pids.max": str(limits.pids)},
                    "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(int(limits.cpus * 100000))}}
        self.paths: list[Path] = []
        for controller, values in settings.items():
            root = CGROUP_ROOT / controller
            if not os.access(root, os.W_OK):
                continue
            path = root / "ponder-sandbox" / name
            _sweep(path.parent)
            path.mkdir(parents=True)
            for key, value in values.items():
                (path / key).write_text(value)
            if os.geteuid() == 0:
                os.chown(path / "cgroup.procs", SANDBOX_UID, SANDBOX_UID)
            self.paths.append(path)

    def join(self) -> None:  # in the child, between fork and exec
        for path in self.paths:
            fd = os.open(path / "cgroup.procs", os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)

    def remove(self) -> None:
        for path in self.paths:
            for _ in range(50):  # the kernel reaps the namespace's processes asynchronously
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.01)
        self.paths = []


def _sweep(parent: Path, min_age_s: float = 60.0) -> None:
    """Remove groups left by sandboxes whose owner died (killed verifier processes cannot clean up). The kernel
    refuses to remove a group that still has processes; young ones may be about to get theirs."""
    if not parent.is_dir():
        return
    for group in parent.iterdir():
        try:
            if group.is_dir() and time.time() - group.stat().st_mtime > min_age_s:
                group.rmdir()
        except OSError:
            pass


class Sandbox:
    """One started sandbox: bubblewrap, and the harness inside it waiting for a job on its private channel."""

    def __init__(self, limits: Limits):
        if shutil.which("bwrap") is None:
            raise SandboxError("bubblewrap (bwrap) is not installed; `make setup` installs it (apt-get install "
                               "bubblewrap), or install it yourself")
        self.limits = limits
        self.cgroup = _Cgroups(limits)
        jobs_r, self._jobs = os.pipe()
        replies_r, replies_w = os.pipe()
        self._channel = (jobs_r, replies_w)
        as_root = os.geteuid() == 0
        # RLIMIT_NPROC counts every task of the real uid. As root the sandbox runs as a uid of its own; otherwise it
        # shares the caller's (a reward pod's Ray processes and threads), whose tasks it must not count against it.
        self._nproc = limits.processes + (0 if as_root else tasks_of(os.getuid()))
        try:
            self.process = subprocess.Popen(
                bwrap_command(limits), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin"}, start_new_session=True, pass_fds=(3, 4), preexec_fn=self._in_child,
                user=SANDBOX_UID if as_root else None, group=SANDBOX_UID if as_root else None,
                extra_groups=[] if as_root else None)
        finally:
            os.close(jobs_r)
            os.close(replies_w)
        self._replies = _FrameReader(replies_r)
        self.jobs, self.ready = 0, False

    def _in_child(self) -> None:
        """Between fork and exec: the job channel onto fds 3 and 4, the cgroups, and the limits."""
        jobs_r, replies_w = (os.dup(fd) for fd in self._channel)  # fresh numbers, clear of 3 and 4
        os.dup2(jobs_r, 3)
        os.dup2(replies_w, 4)
        self.cgroup.join()
        mb = 1 << 20
        lim = self.limits
        for name, value in ((resource.RLIMIT_AS, lim.memory_mb * mb), (resource.RLIMIT_CPU, HARNESS_CPU_S),
                            (resource.RLIMIT_NPROC, self._nproc), (resource.RLIMIT_FSIZE, lim.file_mb * mb),
                            (resource.RLIMIT_NOFILE, lim.open_files), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(name, (value, value))

    def wait_ready(self) -> None:
        if not self.ready:
            frame = self._replies.frame(time.monotonic() + START_TIMEOUT_S, 1024)
            if frame is None or frame.get("ready") is not True:
                stderr = self._stderr()
                raise SandboxError(f"the sandbox did not start: {stderr}" + why_bwrap_failed(stderr))
            self.ready = True

    def alive(self) -> bool:
        return self.process.poll() is None

    def job(self, code: str, kind: str, seconds: Optional[float] = None) -> "Job":
        self.wait_ready()
        self.jobs += 1
        return Job(self, code, kind, seconds)

    def send(self, record: dict) -> None:
        data = json.dumps(record).encode()
        try:
            os.write(self._jobs, struct.pack(">I", len(data)) + data)
        except (BrokenPipeError, OSError):
            raise SandboxError(f"the sandbox died: {self._stderr()}") from None

    def receive(self, deadline: float) -> Optional[dict]:
        # a reply carries at most output_kb of text, which JSON escaping can grow sixfold (\u0000 for one byte)
        return self._replies.frame(deadline, self.limits.output_kb * 1024 * 8 + 65536)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def _stderr(self) -> str:
        self.kill()
        text = self.process.stderr.read(4096).decode(errors="replace").strip()
        return text or f"bwrap exited with code {self.process.returncode}"

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # bwrap; --die-with-parent takes the namespace down
            except ProcessLookupError:
                pass
            self.process.wait()
        for fd in (self._jobs, self._replies.fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._jobs = self._replies.fd = -1
        self.cgroup.remove()


class Job:
    """One program's run on a sandbox: requests answered in order, each reply bound to this job by a nonce that only
    the parent and the harness know, and numbered. Use through `SandboxPool.job`."""

    def __init__(self, box: Sandbox, code: str, kind: str, seconds: Optional[float] = None):
        self.box, self.kind = box, kind
        self.nonce = secrets.token_hex(16)
        self.sent = 0
        self.left_s = seconds or box.limits.timeout_s  # the harness's time on this job, all requests together
        self.changed: list[str] = []
        box.send({"nonce": self.nonce, "code": code, "kind": kind})

    def call(self, name: str, args: str, kwargs: str) -> Reply:
        """The program's function `name` on plain arguments (`plain.encode` text); the reply's body likewise."""
        return self._request({"op": "call", "name": name, "args": args, "kwargs": kwargs})

    def exec(self, source: str, fill: bool = False) -> Reply:
        """Run test code beside the program (the inexact fallback); `fill`: only add names the program lacks."""
        return self._request({"op": "exec", "source": source, "fill": fill})

    def run(self, stdin: str) -> Reply:
        """The program as __main__ on `stdin`, in a fresh child; the reply's body is its stdout."""
        return self._request({"op": "run", "stdin": stdin})

    def _request(self, request: dict) -> Reply:
        limits = self.box.limits
        start = time.monotonic()
        self.box.send(request)
        self.sent += 1
        wait = min(limits.case_timeout_s + REPLY_MARGIN_S, self.left_s)
        frame = self.box.receive(start + wait)
        self.left_s -= time.monotonic() - start
        if frame is None:
            raise SandboxError(f"the sandbox gave no answer within {wait:.0f}s")
        if frame.get("nonce") != self.nonce or frame.get("seq") != self.sent:
            raise SandboxError("the sandbox answered out of turn (wrong job or sequence number)")
        status, body = str(frame.get("status")), str(frame.get("body", ""))
        if status == "starved":
            raise SandboxError(f"a test case was starved of CPU by other work on this machine ({body})")
        if status == "unavailable":
            raise SandboxError(f"the sandbox could not start a process for the program ({body})")
        return Reply(status, body, float(frame.get("wall_s", 0.0)))

    def finish(self) -> bool:
        """End the job; True if the harness swept the sandbox clean (and every request was answered). `changed` then
        says what the job left changed, if anything (why the sandbox is discarded)."""
        self.box.send({"op": "end"})
        frame = self.box.receive(time.monotonic() + REPLY_MARGIN_S)
        if frame is None or frame.get("nonce") != self.nonce or frame.get("end") != self.sent:
            self.changed = ["no answer to the end of the job"]
            return False
        self.changed = [str(what) for what in frame.get("changed", ["?"])]
        return frame.get("clean") is True


class _FrameReader:
    """Length-prefixed JSON frames from a pipe, with a deadline and a cap on a frame's size."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(fd, selectors.EVENT_READ)

    def frame(self, deadline: float, cap: int) -> Optional[dict]:
        while True:
            if len(self.buffer) >= 4:
                size = struct.unpack(">I", self.buffer[:4])[0]
                if size > cap:
                    return None
                if len(self.buffer) >= 4 + size:
                    data, self.buffer = self.buffer[4:4 + size], self.buffer[4 + size:]
                    try:
                        record = json.loads(data)
                    except ValueError:
                        return None
                    return record if isinstance(record, dict) else None
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk


class SandboxPool:
    """Keeps `warm` sandboxes started (interpreter up, harness waiting) and reuses each one that its harness proved
    clean after a job, so a job pays only for its own run. Thread-safe: jobs on different threads run at once, each
    on its own sandbox (the tool environment's steps)."""

    def __init__(self, limits: Limits = Limits(), warm: int = 2):
        limits.check()
        self.limits, self.warm = limits, warm
        self._ready: list[Sandbox] = []
        self._lock = threading.Lock()
        self._top_up()

    def job(self, code: str, kind: str, seconds: Optional[float] = None) -> "_PooledJob":
        """`with pool.job(code, kind) as job: job.call(...)`; the sandbox goes back to the pool if it ends clean.
        `seconds`: the job's wall backstop, if less than `timeout_s` (a second job for the same sample)."""
        return _PooledJob(self, code, kind, seconds)

    def _take(self) -> Sandbox:
        with self._lock:
            while self._ready:
                box = self._ready.pop(0)
                if box.alive():
                    return box
                box.kill()  # killed while it waited (e.g. a verifier-process restart): never handed a job
        return Sandbox(self.limits)

    def _give_back(self, box: Sandbox, clean: bool) -> None:
        with self._lock:
            if clean and box.jobs < self.limits.jobs_per_sandbox and len(self._ready) < self.warm:
                self._ready.append(box)
                return
        box.kill()
        self._top_up()  # a discarded one is replaced now, and boots while the next job runs on another

    def _top_up(self) -> None:
        with self._lock:
            while len(self._ready) < self.warm:
                self._ready.append(Sandbox(self.limits))

    def close(self) -> None:
        with self._lock:
            while self._ready:
                self._ready.pop().kill()


class _PooledJob:
    def __init__(self, pool: SandboxPool, code: str, kind: str, seconds: Optional[float]):
        self.pool, self.code, self.kind, self.seconds = pool, code, kind, seconds

    def __enter__(self) -> Job:
        self.box = self.pool._take()
        try:
            self.job = self.box.job(self.code, self.kind, self.seconds)
        except SandboxError:
            self.box.kill()
            raise
        return self.job

    def __exit__(self, exc_type, *exc) -> None:
        clean = False
        if exc_type is None or not issubclass(exc_type, SandboxError):
            try:
                clean = self.job.finish()
            except SandboxError:
                clean = False
        self.pool._give_back(self.box, clean)


PROBE = r"""
import ctypes, errno, json, os, resource, socket
facts = {"uid": os.getuid(), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
env_names = set()
for pid in facts["pids"]:
    try:
        env_names |= {e.split(b"=")[0].decode() for e in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if e}
    except OSError:
        pass
facts["env_names"] = sorted(env_names)
facts["interfaces"] = [name for _, name in socket.if_nameindex()]
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1).close()
    facts["network"] = True
except OSError:
    facts["network"] = False
facts["writable"] = []
for path in ("/usr/probe", "/probe", "/dev/shm/probe", "/proc/probe"):
    try:
        open(path, "w").close()
        facts["writable"].append(path)
    except OSError:
        pass
facts["visible"] = sorted(os.listdir("/"))
facts["rlimit_as"] = resource.getrlimit(resource.RLIMIT_AS)
libc = ctypes.CDLL(None, use_errno=True)
facts["filtered"] = []  # calls the filter denies that the kernel alone would allow here
for name, number, args in (("kill(1, 0)", {"x86_64": 62, "aarch64": 129}, (1, 0)),
                           ("kill(zygote, 0)", {"x86_64": 62, "aarch64": 129}, (os.getppid(), 0)),
                           ("pidfd_open(self)", {"x86_64": 434, "aarch64": 434}, (os.getpid(), 0))):
    if libc.syscall(number[os.uname().machine], *args) == -1 and ctypes.get_errno() == errno.EPERM:
        facts["filtered"].append(name)
facts["harness_visible"] = [p for pid in (1, os.getppid()) for p in (f"/proc/{pid}/fd", f"/proc/{pid}/mem")
                            if os.access(p, os.R_OK)]
facts["schedstat"] = os.path.exists("/proc/self/schedstat")
print(json.dumps(facts))
"""


@lru_cache(maxsize=None)
def self_test(limits: Limits = Limits()) -> dict:
    """Run a probe inside a sandbox and refuse (SandboxError) unless isolation is in force. Cached per process."""
    with Sandbox(limits) as box:
        job = box.job(PROBE, "stdio")
        result = job.run("")
    if result.status != "ok":
        raise SandboxError(f"sandbox self-test could not run its probe ({result.status}: {result.body})")
    facts = json.loads(result.body)
    expected_as = [limits.memory_mb << 20] * 2
    failures = [what for what, bad in (
        ("runs as root", facts["uid"] == 0),
        ("sees host processes", len(facts["pids"]) > 8),
        ("environment beyond PATH/LANG visible", not set(facts["env_names"]) <= {"PATH", "LANG"}),
        ("has a network interface besides lo", facts["interfaces"] != ["lo"]),
        ("reaches the network", facts["network"]),
        ("writable outside /work and /tmp", facts["writable"]),
        ("host directories visible", not set(facts["visible"]) <= {"bin", "dev", "lib", "lib64", "proc", "sbin",
                                                                      "tmp", "usr", "work"}),
        ("memory limit not in force", facts["rlimit_as"] != expected_as),
        ("seccomp filter not in force", len(facts["filtered"]) != 3),
        ("the harness's or the zygote's file descriptors or memory are open to the program",
         facts["harness_visible"]),
    ) if bad]
    if failures:
        raise SandboxError("sandbox isolation is not in force: " + "; ".join(failures) + f" (facts: {facts})")
    cgroups = [c for c in ("pids", "cpu") if os.access(CGROUP_ROOT / c, os.W_OK)]
    # without per-task scheduler statistics no CPU wait is seen: a starved case fails instead of being masked
    return {"cgroups": cgroups, "load_aware": facts["schedstat"], **asdict(limits)}
