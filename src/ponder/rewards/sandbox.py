"""A local sandbox for model-written code: bubblewrap namespaces, resource limits, and a wall clock, with a warm pool.

Threat model. The program is hostile: it was written by a policy being optimised to make a number go up. It may loop,
sleep, allocate, fork, fill disks, print without end, try the network, read secrets, tamper with the harness, or try to
make a failing test look passed. What is contained:
  - Files: the root is empty but for /usr (and its /bin, /lib links) read-only, a fresh /proc and a minimal /dev. /etc,
    /root, /home, the project and the venv are not there at all. Writable: /work and /tmp, private tmpfs capped at
    `file_mb` each, gone with the sandbox.
  - Identity and processes: new user, pid, ipc, uts, cgroup and network namespaces; uid/gid 65534 inside, and as the
    real uid outside when the parent is root (so RLIMIT_NPROC applies); all capabilities dropped; no nested user
    namespaces; a new session (no terminal injection). The program sees only the sandbox's processes, and when
    bubblewrap's init dies (wall timeout, `kill(-1)`, parent death) the kernel kills every process left inside.
  - Environment: bubblewrap itself starts with only PATH, so no secret of the parent is readable in any
    /proc/<pid>/environ inside.
  - Network: only a loopback of its own; no route out, no DNS, no host loopback.
  - Resources: RLIMIT_AS, CPU, NPROC, FSIZE, NOFILE and CORE with soft = hard (the program cannot raise them),
    cgroup-v1 `pids.max` and a CPU quota per sandbox where /sys/fs/cgroup/{pids,cpu} are writable, a per-case and a
    whole-run wall timeout, and output read through a byte cap.
  - Results: the harness is undumpable, and the parent trusts nothing it says; expected values never enter the
    sandbox, and outputs are compared in the parent (`rewards/code.py`).
What is not contained: kernel exploits (there is no seccomp filter here: run reward pods with the RuntimeDefault
seccomp profile, docs/rewards.md), side channels, and contention: a program may use its sandbox's CPU quota and
memory up to the limits, which slows programs in other sandboxes on the same cores (without the cpu cgroup, a fork
bomb's processes compete with them until its wall timeout). Wall timeouts are therefore set well above an honest
run's time. A hostile program can make its own results wrong (score 0), not someone else's results right.

An infrastructure failure (bubblewrap missing, a sandbox that never says `ready`, a failed self-test) raises
`SandboxError`; the reward pool turns it into a masked sample, never a 0. `self_test()` checks that isolation is in
force and refuses to score when it is not.

Runs in single-threaded processes (the reward pool's workers): `preexec_fn` sets the limits between fork and exec.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

SANDBOX_UID = 65534  # nobody
PYTHON = "/usr/bin/python3"  # the system interpreter under /usr: stdlib only, nothing from the project's venv
HARNESS = (Path(__file__).with_name("sandbox_harness.py")).read_text()
CGROUP_ROOT = Path("/sys/fs/cgroup")  # cgroup v1 controllers: pids, cpu
START_TIMEOUT_S = 20.0  # a cold start on a loaded 2-core machine; an idle one takes ~0.1 s


class SandboxError(RuntimeError):
    """The sandbox could not run the program: an infrastructure failure, not the program's fault."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 4.0  # wall time of one run (all cases); everything left is killed after it
    case_timeout_s: float = 1.0  # wall time of one case
    memory_mb: int = 512  # address space per process
    cpu_s: int = 4  # CPU seconds per process
    processes: int = 256  # RLIMIT_NPROC of the sandbox uid (all sandboxes together)
    pids: int = 24  # processes and threads per sandbox (cgroup pids.max, where available)
    cpus: float = 1.0  # CPU quota per sandbox (cgroup cpu.cfs_quota_us, where available)
    file_mb: int = 16  # largest file, and the size of /work and of /tmp
    open_files: int = 64
    output_kb: int = 64  # output read per case; the rest is not read
    jobs_per_sandbox: int = 64  # a warm sandbox is swept clean after each job, and replaced after this many


@dataclass(frozen=True)
class CaseResult:
    status: str  # "ok", "timeout", "output_limit", "exit N", "signal N", or "no result" (the run ended first)
    output: str = ""


def bwrap_command(limits: Limits) -> list[str]:
    size = str(limits.file_mb << 20)
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid",
           str(SANDBOX_UID), "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
           "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
           "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
           "--size", size, "--tmpfs", "/work", "--size", size, "--tmpfs", "/tmp", "--chdir", "/work"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):  # merged-/usr systems link these; others get them read-only
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    # bubblewrap builds / and /dev (with /dev/shm) as uncapped tmpfs: read-only once everything is mounted
    return cmd + ["--remount-ro", "/dev", "--remount-ro", "/", PYTHON, "-I", "-S", "-c", HARNESS]


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
    """One started sandbox: the harness is up and waits for a job. Killed after a job unless the harness swept it
    clean (no process left but its own, /work and /tmp empty, no SysV IPC objects)."""

    def __init__(self, limits: Limits):
        if shutil.which("bwrap") is None:
            raise SandboxError("bubblewrap (bwrap) is not installed; `make setup` installs it (apt-get install "
                               "bubblewrap), or install it yourself")
        self.limits = limits
        self.cgroup = _Cgroups(limits)
        as_root = os.geteuid() == 0
        self.process = subprocess.Popen(
            bwrap_command(limits), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"}, start_new_session=True, close_fds=True, preexec_fn=self._in_child,
            user=SANDBOX_UID if as_root else None, group=SANDBOX_UID if as_root else None,
            extra_groups=[] if as_root else None)
        self.reader = _LineReader(self.process.stdout)
        self.jobs, self.reusable = 0, True

    def _in_child(self) -> None:
        self.cgroup.join()
        mb = 1 << 20
        lim = self.limits
        for name, value in ((resource.RLIMIT_AS, lim.memory_mb * mb), (resource.RLIMIT_CPU, lim.cpu_s),
                            (resource.RLIMIT_NPROC, lim.processes), (resource.RLIMIT_FSIZE, lim.file_mb * mb),
                            (resource.RLIMIT_NOFILE, lim.open_files), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(name, (value, value))

    def run(self, code: str, kind: str, cases: list[str]) -> list[CaseResult]:
        """Run `code` once per case (`kind` "call": case = an expression; "stdio": case = stdin text). Afterwards the
        sandbox is `reusable` if the harness swept it clean within the run's time; otherwise it is killed."""
        self.reusable = False
        try:
            self.reader.budget((self.limits.output_kb * 1024 + 512) * (len(cases) + 1))
            if self.reader.line(time.monotonic() + START_TIMEOUT_S) != "ready":
                raise SandboxError(f"the sandbox did not start: {self._stderr()}")
            job = {"code": code, "kind": kind, "cases": cases, "case_timeout_s": self.limits.case_timeout_s,
                   "output_bytes": self.limits.output_kb * 1024}
            try:
                self.process.stdin.write(json.dumps(job).encode() + b"\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                raise SandboxError(f"the sandbox died before its job: {self._stderr()}") from None
            self.jobs += 1
            results: list[CaseResult] = [CaseResult("no result")] * len(cases)
            deadline = time.monotonic() + self.limits.timeout_s
            while (line := self.reader.line(deadline)) not in (None, "done", "dirty"):
                index, result = _parse(line)
                if index is not None and 0 <= index < len(cases):
                    results[index] = result
            self.reusable = line == "done" and self.jobs < self.limits.jobs_per_sandbox
            return results
        finally:
            if not self.reusable:
                self.kill()

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
        for stream in (self.process.stdin, self.process.stdout):
            if not stream.closed:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass
        self.cgroup.remove()


def _parse(line: str) -> tuple[Optional[int], CaseResult]:
    """A harness line, read as untrusted data."""
    try:
        record = json.loads(line)
        return int(record["index"]), CaseResult(str(record["status"]), str(record["output"]))
    except (ValueError, KeyError, TypeError):
        return None, CaseResult("no result")


class _LineReader:
    """Lines from a pipe, with a deadline and a cap on the bytes read per job."""

    def __init__(self, stream, cap: int = 4096):
        self.fd, self.buffer = stream.fileno(), b""
        self.budget(cap)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)

    def budget(self, cap: int) -> None:
        self.cap, self.read = cap, 0

    def line(self, deadline: float) -> Optional[str]:
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.read >= self.cap or not self.selector.select(left):
                return None
            chunk = os.read(self.fd, min(65536, self.cap - self.read))
            if not chunk:
                return None
            self.read += len(chunk)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")


class SandboxPool:
    """Keeps `warm` sandboxes started (interpreter up, harness waiting) and reuses each one that its harness swept
    clean, so a job pays only for its own run."""

    def __init__(self, limits: Limits = Limits(), warm: int = 2):
        self.limits, self.warm = limits, warm
        self._ready: deque[Sandbox] = deque()
        self._top_up()

    def run(self, code: str, kind: str, cases: list[str]) -> list[CaseResult]:
        box = self._ready.popleft() if self._ready else Sandbox(self.limits)
        try:
            results = box.run(code, kind, cases)
        except SandboxError:  # a warm sandbox may have been killed while it waited: one fresh try
            box = Sandbox(self.limits)
            results = box.run(code, kind, cases)
        if box.reusable:  # swept clean: back in the queue
            self._ready.append(box)
        self._top_up()  # a discarded one is replaced now, and boots while the next job runs on another
        return results

    def _top_up(self) -> None:
        while len(self._ready) < self.warm:
            self._ready.append(Sandbox(self.limits))

    def close(self) -> None:
        while self._ready:
            self._ready.popleft().kill()


PROBE = r"""
import json, os, resource, socket
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
print(json.dumps(facts))
"""


@lru_cache(maxsize=None)
def self_test(limits: Limits = Limits()) -> dict:
    """Run a probe inside a sandbox and refuse (SandboxError) unless isolation is in force. Cached per process."""
    with Sandbox(limits) as box:
        result = box.run(PROBE, "stdio", [""])[0]
    if result.status != "ok":
        raise SandboxError(f"sandbox self-test could not run its probe ({result.status})")
    facts = json.loads(result.output)
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
    ) if bad]
    if failures:
        raise SandboxError("sandbox isolation is not in force: " + "; ".join(failures) + f" (facts: {facts})")
    cgroups = [c for c in ("pids", "cpu") if os.access(CGROUP_ROOT / c, os.W_OK)]
    return {"cgroups": cgroups, **asdict(limits)}
