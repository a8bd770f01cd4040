"""The sandbox's zygote and what its children run: the untrusted program. Standard library only; the sources of
`seccomp.py` and `plain.py` are prepended, and the harness starts it once per sandbox as
`python3 -I -S -c <source> <limits>`.

The zygote is a pristine interpreter: it never sees a job's data (code, inputs, nonces), never runs a program, and is
undumpable, so a program can neither read it nor write it; the filter its children run under denies signalling it.
It talks to the harness on fd 3 (a SOCK_SEQPACKET socket): "spawn" with three fds (requests, replies, failure)
forks a child and answers "pid N"; "wait N" answers "status S" or "running"; "reap" collects dead children. Forking
a started interpreter costs a millisecond where starting one costs tens.

A child: its own session, fds 0-2 on /dev/null, 3 requests and 4 replies (framed JSON), its CPU limit and the filter
set before anything of the program runs; it then waits for its first frame, {"code", "kind", "stdin"}. Nothing in
the child is trusted once the program's first line has run — the program can replace any of it — which is why the
harness and the parent take what comes back as the program's answer (plain data, or stdout) and nothing more.
  stdio: stdin becomes the case's input, stdout the reply pipe; the program runs as __main__ once.
  call:  the program is loaded as module `solution` once; then each request is answered until fd 3 closes:
         {"op": "call", "name", "args", "kwargs"} calls the program's function on decoded plain arguments and replies
         {"status": "ok", "body": encode(value)}; {"op": "exec", "source", "fill"} runs test code in the program's
         namespace (fill: in a namespace of its own, then only the names the program lacks are copied over).
         A failure replies "error" (the exception's type name, "load: ..." if the program did not load) or
         "not_plain" (what could not be encoded).
"""

import builtins
import fcntl
import json
import os
import resource
import socket
import sys
import types


def _recv():
    head = _read(4)
    return None if head is None else json.loads(_read(int.from_bytes(head, "big")))


def _read(size):
    data = b""
    while len(data) < size:
        chunk = os.read(3, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _reply(status, body):
    data = json.dumps({"status": status, "body": body}).encode()
    os.write(4, len(data).to_bytes(4, "big") + data)


def _module(name):
    """A fresh module registered under `name`, as `python3 solution.py` or `import solution` would make it (dataclasses,
    pickle and `typing.get_type_hints` look the program's module up in sys.modules)."""
    module = types.ModuleType(name)
    module.__file__ = "solution.py"
    sys.modules[name] = module
    return module.__dict__


def _run_stdio(code, stdin):
    memfd = os.memfd_create("stdin")
    os.write(memfd, stdin.encode("utf-8", "surrogatepass"))
    os.lseek(memfd, 0, os.SEEK_SET)
    os.dup2(memfd, 0)  # the interpreter's own sys.stdin and sys.stdout (never read or written yet) now use these
    os.dup2(4, 1)
    for fd in (memfd, 3, 4):
        os.close(fd)
    try:
        exec(compile(code, "solution.py", "exec"), _module("__main__"))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the program's failure is its verdict
        code = 1
    try:
        sys.stdout.flush()
    finally:
        os._exit(code)


def _serve(namespace, request):
    if request["op"] == "exec":
        target = {"__builtins__": __builtins__} if request["fill"] else namespace
        exec(compile(request["source"], "test", "exec"), target)
        for name, value in target.items() if request["fill"] else ():
            namespace.setdefault(name, value)
        return True
    function = namespace.get(request["name"])
    if function is None:
        raise NameError(request["name"])
    return function(*decode(request["args"]), **decode(request["kwargs"]))


def run_program():
    program = _recv()
    if program is None:
        return
    if program["kind"] == "stdio":
        _run_stdio(program["code"], program["stdin"])
    namespace = _module("solution")
    try:
        exec(compile(program["code"], "solution.py", "exec"), namespace)
        loaded = None
    except BaseException as e:  # noqa: BLE001 - the program's failure is its verdict
        loaded = "load: " + type(e).__name__
    while True:
        request = _recv()
        if request is None:
            return
        if loaded:
            _reply("error", loaded)
            continue
        try:
            value = _serve(namespace, request)
        except BaseException as e:  # noqa: BLE001
            _reply("error", _builtin_base(type(e)))
            continue
        try:
            _reply("ok", encode(value))
        except (TypeError, ValueError, RecursionError) as e:
            _reply("not_plain", str(e)[:200])


def _builtin_base(kind):
    """The nearest builtin exception class of a raised one: `class BadInput(ValueError)` is caught as ValueError."""
    for base in getattr(kind, "__mro__", ()):
        if getattr(base, "__module__", None) == "builtins":
            return base.__name__
    return "Exception"


def _exit(code=None):
    raise SystemExit(code)


def _child(link, fds, filt, limits):
    """In a forked child: set up, report failure (never the program's) on the failure fd, run the program."""
    failed = fds[2]
    try:
        link.close()
        os.setsid()  # its own session and group: it can never join another's
        null = os.open("/dev/null", os.O_RDWR)
        requests, replies, failed = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds)  # clear of 0-9
        for target, fd in enumerate((null, null, null, requests, replies)):
            os.dup2(fd, target)
        os.closerange(5, failed)
        os.closerange(failed + 1, 1 << 16)
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"]))
        install(filt)
        os.close(failed)  # the harness reads end-of-file: set up
    except BaseException as e:  # noqa: BLE001 - reported to the harness, which masks the sample
        os.write(failed, repr(e).encode()[:500])
        os._exit(127)
    try:
        run_program()
    except BaseException:  # noqa: BLE001
        os._exit(1)
    os._exit(0)


def zygote(limits):
    import ctypes

    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/<pid>/mem, fd or environ for anyone
    builtins.exit = builtins.quit = _exit  # what the site module (-S: not loaded) would give programs
    link = socket.socket(fileno=3)
    filt = prepare(protect=(os.getpid(),))
    link.send(b"ready")
    while True:
        message, fds, _, _ = socket.recv_fds(link, 64, 3)
        if not message:
            return
        command, _, argument = message.decode().partition(" ")
        if command == "spawn":
            try:
                pid = os.fork()
            except OSError as e:
                pid, error = -1, e
            if pid == 0:
                _child(link, fds, filt, limits)
            for fd in fds:
                os.close(fd)
            link.send(b"pid %d" % pid if pid > 0 else b"error " + repr(error).encode()[:200])
        elif command == "wait":
            try:
                done, status = os.waitpid(int(argument), os.WNOHANG)
                link.send(b"status %d" % status if done else b"running")
            except ChildProcessError:
                link.send(b"gone")
        elif command == "reap":
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass
            link.send(b"reaped")


if __name__ == "__main__":
    zygote(json.loads(sys.argv[1]))
