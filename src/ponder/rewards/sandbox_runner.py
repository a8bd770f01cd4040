"""What a sandbox child runs, in a fresh interpreter under the seccomp filter: the untrusted program. Standard library
only; `plain.py`'s source is prepended (encode/decode), and the harness runs it as `python3 -I -S -c <source>`.

It starts before its job exists (the harness keeps one ready) with fds 0-2 on /dev/null, 3 requests and 4 replies
(framed JSON), and waits for its first frame: {"code", "kind", "stdin"}. Nothing here is trusted once the program's
first line has run — the program can replace any of it — which is why the harness and the parent take what comes back
as the program's answer (plain data, or stdout) and nothing more.
  stdio: stdin becomes the case's input, stdout the reply pipe; the program runs as __main__ once.
  call:  the program is loaded as module `solution` once; then each request is answered until fd 3 closes:
         {"op": "call", "name", "args", "kwargs"} calls the program's function on decoded plain arguments and replies
         {"status": "ok", "body": encode(value)}; {"op": "exec", "source", "fill"} runs test code in the program's
         namespace (fill: in a namespace of its own, then only the names the program lacks are copied over).
         A failure replies "error" (the exception's type name, "load: ..." if the program did not load) or
         "not_plain" (what could not be encoded).
"""

import json
import os
import sys


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


def _run_stdio(code, stdin):
    memfd = os.memfd_create("stdin")
    os.write(memfd, stdin.encode("utf-8", "surrogatepass"))
    os.lseek(memfd, 0, os.SEEK_SET)
    os.dup2(memfd, 0)
    os.dup2(4, 1)
    for fd in (memfd, 3, 4):
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    exec(compile(code, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()


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


def main():
    program = _recv()
    if program is None:
        return
    if program["kind"] == "stdio":
        _run_stdio(program["code"], program["stdin"])
        return
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
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
            _reply("error", type(e).__name__)
            continue
        try:
            _reply("ok", encode(value))
        except (TypeError, ValueError, RecursionError) as e:
            _reply("not_plain", str(e)[:200])


if __name__ == "__main__":
    main()
