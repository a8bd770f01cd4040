"""The trusted harness inside the sandbox: runs each request of a job in a filtered child, under CPU and wall limits,
and keeps the sandbox clean between jobs. Standard library only.

It is not imported: `sandbox.py` runs `python3 -I -S -c <this file> <runner source> <limits>` under bubblewrap with
`--as-pid-1`: the harness is the sandbox's init, and nothing a program starts outlives its job.

The result channel. The harness talks to the parent only on fds 3 (jobs and requests in) and 4 (replies out), framed
JSON (4-byte length, then the text). No other process in the sandbox holds them, and the harness is undumpable (no
ptrace, /proc/1/fd, /proc/1/mem or pidfd_getfd for anyone), and as pid 1 of its namespace it ignores every signal sent
from inside. Every reply carries the job's nonce (a random value only the harness and the parent know) and its
sequence number; the parent refuses anything else.

The children. At start the harness launches the zygote (`sandbox_runner.py`): a fresh, undumpable interpreter that
never sees a job's data. Each program runs in a child the zygote forks (a millisecond, where a new interpreter costs
tens): it closes what is not its own, takes a session of its own and the seccomp filter before the program's first
line, so it can read, signal, trace or re-limit neither the harness nor the zygote, and it inherits no job's memory.

A job: {"nonce", "code", "kind": "call" | "stdio"}, then requests, each answered by one reply {"nonce", "seq",
"status", "body", "wall_s"}:
  call: {"op": "call", "name", "args", "kwargs"} (plain-data JSON): the program, loaded once per job in a persistent
        child (reloaded after a failed request), calls its function `name`; the body is the value's plain JSON;
        {"op": "exec", "source", "fill"} runs trusted test code beside the program (the inexact fallback);
  stdio: {"op": "run", "stdin"}: a fresh child runs the program as __main__; the body is its stdout.
  {"op": "end"} -> {"nonce", "end": <requests answered>, "clean": bool}; after a clean end the next job may come.

Verdicts that do not depend on machine load: a request fails as too slow ("timeout") when the job's processes used
more than `case_cpu_s` of CPU on it. `case_timeout_s` of wall time is a backstop: a request killed there fails
("timeout") if it slept or blocked, and is reported "starved" (the parent masks the sample) if it spent most of that
time runnable but waiting for a CPU that processes outside its own job held. The job's own time (wall minus that
wait) is capped at `budget_s`: later requests fail. Statuses: ok, error, timeout, starved, output_limit, not_plain,
died, and unavailable (no child process could be started: the parent masks the sample).

After a job it sweeps: kills every process but itself and the zygote, removes SysV IPC objects and POSIX queues,
empties /work and /tmp, checks that the zygote still waits (not stopped, not dead), and compares its own process
state (limits, nice, affinity, scheduler, I/O priority, OOM score, timer slack, cgroup, keyrings, mounts, the modes,
extended attributes and ACLs of /work and /tmp) with what it was at start. Any difference, or a sweep that fails,
ends the sandbox ("clean": false): a poisoned sandbox never serves another job. The times of /work and /tmp (which
every job that writes a file changes) are set back to their start values.
"""

import ctypes
import fcntl
import json
import os
import resource
import select
import signal
import socket
import sys
import time

PYTHON = "/usr/bin/python3"
JOB_IN, REPLY_OUT = 3, 4
TICK = os.sysconf("SC_CLK_TCK")
FIRST_POLL_S, MAX_POLL_S = 0.005, 0.05
START_S, ANSWER_S = 20.0, 5.0  # the zygote's start on a loaded machine; any of its answers
MAX_SWEPT = 10000  # files and directories in /work and /tmp that a sweep deletes; more: the sandbox is discarded
CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
CHILD_STATUSES = ("ok", "error", "not_plain")  # what a child's reply may say; every other status is the harness's
IOPRIO_GET = {"x86_64": 252, "aarch64": 31}


def frame(record):
    data = json.dumps(record).encode()
    return len(data).to_bytes(4, "big") + data


def send(fd, record):
    os.write(fd, frame(record))  # the parent always reads: a blocking write is fine


def recv(fd):
    head = _read_exactly(fd, 4)
    return None if head is None else json.loads(_read_exactly(fd, int.from_bytes(head, "big")))


def _read_exactly(fd, size):
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def cpu_seconds():
    """CPU used by every process of the sandbox but the harness: live ones, and dead ones reaped by their parents
    (cutime) or by the harness (its cutime). Each process's time is counted once, with its own or its reaper's."""
    ticks = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            fields = _stat(pid)
            if fields:
                ticks += sum(fields[11:15]) if pid != "1" else fields[13] + fields[14]
    return ticks / TICK


def _stat(pid):
    try:
        text = open("/proc/" + pid + "/stat").read()
    except OSError:
        return None
    return [int(x) if x.lstrip("-").isdigit() else 0 for x in text[text.rindex(")") + 2:].split()]


def schedstat(pid):
    """(ns on a CPU, ns runnable but waiting for one) of a process's main thread; zeros where the kernel has none."""
    try:
        on_cpu, waiting = open("/proc/%d/schedstat" % pid).read().split()[:2]
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return 0, 0


class Zygote:
    """The pristine interpreter that forks each program's child (`sandbox_runner.py`), and the harness's link to it."""

    def __init__(self, limits):
        self.link, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.setsid()
                null = os.open("/dev/null", os.O_RDWR)
                link = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD, 10)
                for target, fd in enumerate((null, null, null, link)):
                    os.dup2(fd, target)
                os.closerange(4, 1 << 16)
                os.execve(PYTHON, [PYTHON, "-I", "-S", "-c", sys.argv[1], json.dumps(limits)], CHILD_ENV)
            finally:
                os._exit(127)
        theirs.close()
        self.link.settimeout(START_S)
        if self.link.recv(64) != b"ready":
            raise OSError("the zygote did not start")
        self.link.settimeout(ANSWER_S)  # it answers in microseconds; only a broken sandbox makes it wait

    def ask(self, message, fds=()):
        socket.send_fds(self.link, [message], list(fds))
        return self.link.recv(256).decode()

    def spawn(self, fds):
        answer = self.ask(b"spawn", fds)
        if not answer.startswith("pid "):
            raise OSError("no child: " + answer)
        return int(answer[4:])

    def alive(self):
        """Running or waiting: not dead, stopped or traced."""
        try:
            text = open("/proc/%d/stat" % self.pid).read()
        except OSError:
            return False
        return text[text.rindex(")") + 2] in "RS"


class Child:
    """One child of the zygote, set up for a program (filtered, its own session) and waiting for its first frame."""

    def __init__(self, zygote):
        """OSError if it could not be set up (no process, the filter refused): never the program's doing."""
        requests_r, self.requests = os.pipe()
        self.replies, replies_w = os.pipe()
        failed_r, failed_w = os.pipe()
        self.zygote = zygote
        try:
            self.pid = zygote.spawn((requests_r, replies_w, failed_w))
        finally:
            for fd in (requests_r, replies_w, failed_w):
                os.close(fd)
        failure = os.read(failed_r, 512)  # end-of-file once the child is set up (it closes its end)
        os.close(failed_r)
        os.set_blocking(self.requests, False)
        self.status, self.kind, self.got = None, None, b""
        if failure:
            self.close()
            raise OSError("the sandbox could not set up a child: " + failure.decode(errors="replace"))

    def reap(self):
        if self.status is None:
            answer = self.zygote.ask(b"wait %d" % self.pid)
            if answer.startswith("status "):
                self.status = int(answer[7:])
        return self.status

    def close(self):
        for fd in (self.requests, self.replies):
            try:
                os.close(fd)
            except OSError:
                pass


def serve(child, pending, limits, started):
    """Write `pending` to the child, then wait for its answer — a reply frame (call), or its stdout closed and its exit
    (stdio) — under the limits, which hold until then; returns (status, body, own_s): own_s is the wall time less
    the time the child waited for a CPU that others held."""
    cpu0, (_, waited0) = cpu_seconds(), schedstat(child.pid)
    child.got, poll, closed = b"", FIRST_POLL_S, False
    while True:
        readers = [] if closed else [child.replies]
        readable, writable, _ = select.select(readers, [child.requests] if pending else [], [], poll)
        if writable:
            try:
                pending = pending[os.write(child.requests, pending):]
            except (BlockingIOError, BrokenPipeError):
                pass
        if readable:
            chunk = os.read(child.replies, 65536)
            child.got += chunk
            closed = not chunk
            if len(child.got) > limits["output_bytes"] + (4 if child.kind == "call" else 0):  # a frame's header
                mine = own_time(child, started, waited0, 0.0)
                return "output_limit", "more than %d bytes" % limits["output_bytes"], mine
        answer = _answer(child, closed)
        if answer:
            return answer + (own_time(child, started, waited0, cpu_seconds() - cpu0),)
        poll = min(poll * 2, MAX_POLL_S)
        used = cpu_seconds() - cpu0
        wall = time.monotonic() - started
        if used > limits["case_cpu_s"]:
            return "timeout", "used %.2f s of CPU" % used, own_time(child, started, waited0, used)
        if wall > limits["case_timeout_s"]:
            mine = own_time(child, started, waited0, used)
            if wall - mine > wall / 2:
                return "starved", "waited %.2f s of %.2f s for a CPU" % (wall - mine, wall), mine
            return "timeout", "%.2f s wall, %.2f s CPU" % (wall, used), mine


def own_time(child, started, waited0, used):
    """Wall time since `started` less what the child's main thread waited for a CPU held outside its job (the
    waiting its own processes caused, at most the CPU they used, is its own)."""
    wall = time.monotonic() - started
    external = max(0.0, (schedstat(child.pid)[1] - waited0) / 1e9 - used)
    return wall - min(external, wall)


def _answer(child, closed):
    """(status, body) once the child has answered: a whole reply frame (call), stdout closed and exited (stdio)."""
    if child.kind == "call":
        if _complete(child):
            return _reply(child)
        return ("died", _exit_text(child)) if closed else None
    if not closed or child.reap() is None:
        return None
    if child.status != 0:
        return "died", _exit_text(child)
    return "ok", child.got.decode("utf-8", "replace")


def _complete(child):
    return len(child.got) >= 4 and len(child.got) >= 4 + int.from_bytes(child.got[:4], "big")


def _reply(child):
    size = int.from_bytes(child.got[:4], "big")
    try:
        reply = json.loads(child.got[4:4 + size])
        status, body = str(reply["status"]), str(reply["body"])
    except Exception:  # noqa: BLE001 - the program wrote it: bad JSON, too deep, not an object, ...
        return "died", "an unreadable reply"
    if status not in CHILD_STATUSES:  # the program may name any status: only an answer's are its to give
        return "died", "a reply with status %r" % status[:40]
    return status, body


def _exit_text(child):
    status = child.reap()
    if status is None:
        return "closed its reply pipe"
    if os.WIFSIGNALED(status):
        return "signal %d" % os.WTERMSIG(status)
    return "exit %d" % os.WEXITSTATUS(status)


def kill_all(zygote):
    """Kill every process here but the harness and the zygote (a child's whole session, and anything that left it),
    and reap them; False if some would not go."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, zygote.pid)]
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        zygote.ask(b"reap")
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:  # orphans, which the harness inherits as init
                pass
        except ChildProcessError:
            pass
        if not others:
            return True
        time.sleep(0.001)
    return False


def run_job(job, zygote, limits):
    """Answer the job's requests; returns how many were answered."""
    kind, nonce = job["kind"], job["nonce"]
    child, own_total, answered, load_error = None, 0.0, 0, None
    while True:
        request = recv(JOB_IN)
        if request is None or request.get("op") == "end":
            if child is not None:
                child.close()
            return answered
        started = time.monotonic()
        if own_total > limits["budget_s"]:
            status, body, mine = "timeout", "the job's time budget is spent", 0.0
        elif load_error is not None:
            status, body, mine = "error", load_error, 0.0
        else:
            if child is None:
                try:
                    child = Child(zygote)
                except OSError as e:  # no process to be had (e.g. another sandbox's fork bomb): not this program's
                    send(REPLY_OUT, {"nonce": nonce, "seq": answered + 1, "status": "unavailable", "body": str(e)})
                    return answered + 1
            pending = b""
            if child.kind is None:  # a fresh child: the program first
                child.kind = kind
                pending = frame({"code": job["code"], "kind": kind, "stdin": request.get("stdin", "")})
            if kind == "call":
                pending += frame(request)
            status, body, mine = serve(child, pending, limits, started)
            if status == "error" and body.startswith("load: "):
                load_error = body  # the program itself fails to load: every request fails alike, no reloads
            if status not in CHILD_STATUSES or kind == "stdio":
                cleaning = time.monotonic()
                child.close()
                kill_all(zygote)
                child = None
                mine += time.monotonic() - cleaning  # the program's processes to kill are its own time
        own_total += mine
        answered += 1
        send(REPLY_OUT, {"nonce": nonce, "seq": answered, "status": status, "body": body[:limits["output_bytes"]],
                         "wall_s": round(time.monotonic() - started, 4)})


def snapshot():
    """The harness's own state and the sandbox's shared state, as a program could try to change them."""
    libc = ctypes.CDLL(None, use_errno=True)
    state = {
        "rlimits": [resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_")],
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "affinity": sorted(os.sched_getaffinity(0)),
        "scheduler": (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority),
        "ioprio": libc.syscall(IOPRIO_GET.get(os.uname().machine, -1), 1, 0),  # IOPRIO_WHO_PROCESS, self
        "dirs": [(d, os.stat(d).st_mode, os.stat(d).st_uid, sorted(os.listdir(d)),
                  sorted((name, os.getxattr(d, name)) for name in os.listxattr(d)))  # ACLs are xattrs too
                 for d in ("/work", "/tmp")],
        "queues": sorted(os.listdir("/dev/mqueue")),
        # modification times (access times are the kernel's to move: relatime updates them after any change)
        "times": {d: os.stat(d).st_mtime_ns for d in ("/work", "/tmp")},
    }
    for name in ("/proc/self/oom_score_adj", "/proc/self/timerslack_ns", "/proc/self/cgroup", "/proc/self/mountinfo",
                 "/proc/keys", "/proc/key-users"):
        try:
            state[name] = open(name).read()
        except OSError as e:
            state[name] = "unreadable: %s" % e.errno
    for kind in ("shm", "sem", "msg"):
        state["sysv " + kind] = len(open("/proc/sysvipc/" + kind).read().splitlines()) - 1
    return state


def sweep(zygote, start):
    """Leave the sandbox as it started: no process but the zygote, no IPC object, queue or file left behind, and the
    times of /work and /tmp as they were (else a program could leave a value there for the next one). False if that
    failed, or would take long (a sandbox with very many files is discarded instead: killing it frees them at once)."""
    if not kill_all(zygote) or not zygote.alive() or _more_entries_than(MAX_SWEPT, ("/work", "/tmp")):
        return False
    libc = ctypes.CDLL(None)
    for kind, remove in (("shm", lambda i: libc.shmctl(i, 0, None)), ("sem", lambda i: libc.semctl(i, 0, 0)),
                         ("msg", lambda i: libc.msgctl(i, 0, None))):  # SysV IPC objects outlive processes: IPC_RMID
        for row in open("/proc/sysvipc/" + kind).read().splitlines()[1:]:
            remove(int(row.split()[1]))
    for name in os.listdir("/dev/mqueue"):
        os.unlink("/dev/mqueue/" + name)
    for top in ("/work", "/tmp"):
        for root, dirs, files in os.walk(top, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                path = os.path.join(root, name)
                os.unlink(path) if os.path.islink(path) else os.rmdir(path)
        os.utime(top, ns=(start["times"][top], start["times"][top]))
    return True


def _more_entries_than(limit, tops):
    seen = 0
    for top in tops:
        for _, dirs, files in os.walk(top):
            seen += len(dirs) + len(files)
            if seen > limit:
                return True
    return False


def main():
    if os.getpid() != 1:  # outside a pid namespace of its own, killing every other process would be a disaster
        sys.exit("the sandbox harness runs only inside the sandbox (as pid 1 of its own pid namespace)")
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace, pidfd_getfd or /proc/1/* for anyone
    limits = json.loads(sys.argv[2])
    start = snapshot()
    zygote = Zygote(limits)  # failing here is failing to start: the parent sees no "ready"
    send(REPLY_OUT, {"ready": True})
    while True:
        job = recv(JOB_IN)
        if job is None:
            return
        answered = run_job(job, zygote, limits)
        try:
            now = snapshot() if sweep(zygote, start) else {"the sweep": "failed"}
        except OSError as e:  # e.g. a directory the program made unreadable, a zygote that stopped answering
            now = {"the sweep": str(e)}
        changed = sorted(key for key in set(start) | set(now) if start.get(key) != now.get(key))
        send(REPLY_OUT, {"nonce": job["nonce"], "end": answered, "clean": not changed, "changed": changed})
        if changed:
            return


if __name__ == "__main__":  # run by `python3 -c` inside the sandbox; never on import
    main()
