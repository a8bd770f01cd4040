"""The trusted harness that runs inside the sandbox, before and around the untrusted program. Standard library only.

It is not imported: `sandbox.py` passes this file's source to `python3 -I -S -c` inside bubblewrap. It makes itself
undumpable (no ptrace, no /proc/<pid>/fd for the program), says `ready`, reads one job (one JSON line on stdin), and
runs each case in a forked child in its own process group, with the case's input on stdin, under a per-case wall
timeout and an output cap. One JSON line per case goes back on stdout: status and (capped) output. The parent never
trusts these lines: it compares outputs itself, against expected values that never enter the sandbox.

After a job it sweeps: kills every other process in the sandbox's pid namespace (`kill(-1)`; bubblewrap's init is
immune) and empties /work and /tmp, then says `done` and `ready` for the next job. If the sweep fails it says `dirty`
and exits, and the parent discards the sandbox. The harness's own memory is never touched by a program: programs
run only in forked children.

Job: {"code": str, "kind": "call" | "stdio", "cases": [str], "case_timeout_s": float, "output_bytes": int}
  call:  each case is an expression; the child runs the code, evaluates the expression and writes `repr` of the value
         (plain data only: anything else is refused) to the output pipe. The program's own prints are discarded.
  stdio: each case is stdin text; the child runs the code as __main__ and its stdout is the output.
"""

import json
import os
import select
import signal
import sys
import time

PLAIN = (int, float, complex, str, bytes, bool, type(None))


def plain_repr(value, depth=0):
    """repr of plain data only: a value whose type is not exactly a builtin container or scalar is refused."""
    if depth > 50:
        raise ValueError("value nested too deep")
    kind = type(value)
    if kind in PLAIN:
        return repr(value)
    if kind in (list, tuple, set, frozenset):
        items = ", ".join(plain_repr(v, depth + 1) for v in value)
        if kind is list:
            return "[" + items + "]"
        if kind is tuple:
            return "(" + items + ("," if len(value) == 1 else "") + ")"
        return kind.__name__ + "([" + items + "])"
    if kind is dict:
        return "{" + ", ".join(plain_repr(k, depth + 1) + ": " + plain_repr(v, depth + 1) for k, v in value.items()) + "}"
    raise TypeError("result of type " + kind.__name__ + " is not plain data")


def run_child(job, case, out_fd):
    os.setpgid(0, 0)
    stdin = os.memfd_create("stdin")
    os.write(stdin, (case if job["kind"] == "stdio" else "").encode())
    os.lseek(stdin, 0, os.SEEK_SET)
    os.dup2(stdin, 0)
    if job["kind"] == "stdio":
        os.dup2(out_fd, 1)
    else:
        os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
    os.dup2(os.open("/dev/null", os.O_WRONLY), 2)
    if job["kind"] == "stdio":
        os.closerange(3, 1 << 16)
        namespace = {"__name__": "__main__"}
        exec(compile(job["code"], "solution.py", "exec"), namespace)
        sys.stdout.flush()
        return
    os.dup2(out_fd, 3)
    os.closerange(4, 1 << 16)
    namespace = {"__name__": "solution"}
    exec(compile(job["code"], "solution.py", "exec"), namespace)
    text = plain_repr(eval(compile(case, "test", "eval"), namespace))
    os.write(3, text.encode("utf-8", "replace"))


def run_case(job, case):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            run_child(job, case, write_fd)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            code = 1
        os._exit(code)
    try:
        os.setpgid(pid, pid)  # also here: the kill below must not race the child's own setpgid
    except OSError:
        pass
    os.close(write_fd)
    deadline = time.monotonic() + job["case_timeout_s"]
    chunks, size, status = [], 0, None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            status = "timeout"
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > job["output_bytes"]:
            status = "output_limit"
            break
    os.close(read_fd)
    exited = None
    while status is None:  # output closed: the child has the rest of its time to exit
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            exited = wait_status
            break
        if time.monotonic() >= deadline:
            status = "timeout"
            break
        time.sleep(0.002)
    try:
        os.killpg(pid, signal.SIGKILL)  # the case's whole group, also after a clean exit (background children)
    except ProcessLookupError:
        pass
    if exited is None:
        _, exited = os.waitpid(pid, 0)
    if status is None:
        if os.WIFSIGNALED(exited):
            status = "signal " + str(os.WTERMSIG(exited))
        elif os.WEXITSTATUS(exited) != 0:
            status = "exit " + str(os.WEXITSTATUS(exited))
        else:
            status = "ok"
    output = b"".join(chunks)[: job["output_bytes"]].decode("utf-8", "replace")
    return {"status": status, "output": output}


def sweep():
    """Leave the sandbox as a new one: every other process killed, /work and /tmp empty. False if that failed."""
    try:
        os.kill(-1, signal.SIGKILL)  # every process here but this one and bubblewrap's init
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
        if not others:
            break
        time.sleep(0.002)
    else:
        return False
    import ctypes

    libc = ctypes.CDLL(None)
    for kind, remove in (("shm", lambda i: libc.shmctl(i, 0, None)), ("sem", lambda i: libc.semctl(i, 0, 0)),
                         ("msg", lambda i: libc.msgctl(i, 0, None))):  # SysV IPC objects outlive processes: IPC_RMID
        for row in open("/proc/sysvipc/" + kind).read().splitlines()[1:]:
            remove(int(row.split()[1]))
    for top in ("/work", "/tmp"):
        for root, dirs, files in os.walk(top, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                path = os.path.join(root, name)
                os.unlink(path) if os.path.islink(path) else os.rmdir(path)
    left = [kind for kind in ("shm", "sem", "msg") if len(open("/proc/sysvipc/" + kind).read().splitlines()) > 1]
    return not os.listdir("/work") and not os.listdir("/tmp") and not left


def main():
    import ctypes

    if os.getpid() != 2:  # pid 2 under bubblewrap's init; outside a pid namespace sweep()'s kill(-1) is a disaster
        sys.exit("the sandbox harness runs only inside the sandbox (as pid 2 of its own pid namespace)")

    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace or /proc/<pid>/fd of the harness
    while True:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            return
        job = json.loads(line)
        for index, case in enumerate(job["cases"]):
            result = run_case(job, case)
            result["index"] = index
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
        try:
            clean = sweep()
        except OSError:  # e.g. a directory the program made unreadable
            clean = False
        sys.stdout.write("done\n" if clean else "dirty\n")
        sys.stdout.flush()
        if not clean:
            return


if __name__ == "__main__":  # run by `python3 -c` inside the sandbox; never on import
    main()
