"""Hostile programs through the public code-reward API: each is contained, scores 0, and leaves the host unchanged.

Where a program tries to steal or reach something, its test expects the stolen thing (a secret, a server's reply),
so a program that got through would score 1: the 0 shows containment, not just failure. The expected values live
only in this process (the parent), as in training.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from ponder.actors.reward import RewardWorker, compose
from ponder.envs.tools import ToolEnv
from ponder.platform.config import RewardConfig, RewardSpec
from ponder.rewards import code as code_module
from ponder.rewards.code import code_reward
from ponder.rewards.pool import HardTimeoutPool, Task
from ponder.rewards.sandbox import SANDBOX_UID, Limits, SandboxError, SandboxPool, self_test
from ponder.types import Problem, Trajectory

pytestmark = pytest.mark.integration

OPTIONS = dict(case_cpu_s=1.0, case_timeout_s=1.5, timeout_s=6.0, warm=1)
SECRET = "ponder-canary-5f1c9e"  # in this process's environment and in a file the sandbox must not see


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Canaries, a TCP and a UDP server on the host's loopback, and the host state to compare after each program."""
    os.environ["PONDER_TEST_SECRET"] = SECRET
    secrets_dir = tmp_path_factory.mktemp("aws")
    (secrets_dir / "credentials").write_text(SECRET)
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    received: list[bytes] = []

    def serve():
        tcp.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = tcp.accept()
                conn.sendall(b"pong")
                conn.close()
            except OSError:
                pass
            try:
                data, addr = udp.recvfrom(100)
                received.append(data)
                udp.sendto(b"pong", addr)
            except OSError:
                pass

    stop = threading.Event()
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    yield {"secrets_dir": secrets_dir, "tcp_port": tcp.getsockname()[1], "udp_port": udp.getsockname()[1],
           "udp_received": received}
    stop.set()
    server.join()
    tcp.close()
    udp.close()
    for pool in code_module._POOLS.values():
        pool.close()
    code_module._POOLS.clear()
    del os.environ["PONDER_TEST_SECRET"]


def _score(code: str, tests: list[str] | None = None, cases: list[dict] | None = None) -> float:
    meta = {"cases": cases} if cases is not None else {"tests": tests or ["assert f() == 'done'"]}
    return code_reward(f"here it is\n```python\n{code}\n```", Problem("p", "", metadata=meta), **OPTIONS)


def _host_state() -> dict:
    """What a contained program cannot have changed: files it aimed at, and processes left behind."""
    targets = ["/tmp/fill", "/work/fill", "/work/l", "/usr/evil", "/usr/lib/evil"]
    return {"files": [t for t in targets if os.path.lexists(t)], "procs": sorted(_sandbox_uid_procs())}


SANDBOX_COMMANDS = (b"bwrap\0", b"/usr/bin/python3\0-I\0-S\0-c\0")  # bubblewrap, the harness, its children


def _sandbox_uid_procs() -> list[str]:
    """Command lines of processes running as the sandbox uid, minus the sandboxes' own (warm ones waiting, their
    harnesses and runners): what is left is something a program started and left behind."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == SANDBOX_UID:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read(200)
                if cmd and not cmd.startswith(SANDBOX_COMMANDS):  # empty: exiting
                    out.append(cmd.replace(b"\0", b" ").decode(errors="replace")[:80])
        except OSError:
            pass
    return out


HOSTILE = {
    # resources
    "cpu loop": "def f():\n    while True: pass",
    "sleep": "import time\ndef f():\n    time.sleep(60)\n    return 'done'",
    "memory bomb": "def f():\n    x = bytearray(8 << 30)\n    return 'done'",
    "slow leak": "import time\ndef f():\n    keep = []\n    while True:\n        keep.append(bytearray(1 << 20))\n"
                 "        time.sleep(0.001)",
    "fork bomb": "import os\ndef f():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n"
                 "            pass",
    "thread bomb": "import threading, time\ndef f():\n    while True:\n        try:\n"
                   "            threading.Thread(target=time.sleep, args=(60,)).start()\n        except Exception:\n"
                   "            pass",
    "disk fill": "def f():\n    with open('/work/fill', 'wb') as out:\n        while True: out.write(b'x' * (1 << 20))",
    "tmp fill": "def f():\n    with open('/tmp/fill', 'wb') as out:\n        while True: out.write(b'x' * (1 << 20))",
    "fill the root": "def f():\n    for i in range(10000):\n        open(f'/fill{i}', 'wb').write(b'x' * (8 << 20))",
    "fill /dev/shm": "def f():\n    for i in range(10000):\n        open(f'/dev/shm/fill{i}', 'wb').write(b'x' * (8 << 20))",
    "too many files": "def f():\n    keep = [open('/dev/null') for _ in range(100000)]\n    return 'done'",
    "segfault": "import ctypes\ndef f():\n    ctypes.string_at(0)\n    return 'done'",
    "huge int to str": "def f():\n    str(10 ** 200000)\n    return 'done'",
    "recursion": "def f():\n    return f()",
    "huge return value": "def f():\n    return 'x' * (50 << 20)",
    "orphaned child": "import os, time\ndef f():\n    if os.fork() == 0:\n        os.setsid()\n"
                      "        if os.fork() == 0:\n            os.execv('/usr/bin/sleep', ['sleep', '987'])\n"
                      "        os._exit(0)\n    time.sleep(0.2)\n    return 'not done'",
    # file system
    "write outside with ..": "def f():\n    open('/work/../usr/evil', 'w').write('x')\n    return 'done'",
    "write through a symlink": "import os\ndef f():\n    os.symlink('/usr/lib', '/work/l')\n"
                               "    open('/work/l/evil', 'w').write('x')\n    return 'done'",
    "raise own limits": "import resource\ndef f():\n    resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n"
                        "    return 'done'",
    # processes
    "kill parent": "import os, signal\ndef f():\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 'done'",
    "kill -1": "import os, signal\ndef f():\n    os.kill(-1, signal.SIGKILL)\n    return 'done'",
    "ptrace the harness": "import ctypes, os\ndef f():\n    libc = ctypes.CDLL(None)\n"
                          "    return 'done' if libc.ptrace(16, os.getppid(), 0, 0) == 0 else 'refused'",
    # reward hacks
    "exit 0 before the tests": "import os\nos._exit(0)\ndef f():\n    return 'wrong'",
    "sys.exit inside the call": "import sys\ndef f():\n    sys.exit(0)",
    "always-equal object": "class Yes:\n    def __eq__(self, other): return True\n    def __repr__(self): return \"'done'\"\n"
                           "def f():\n    return Yes()",
    "str subclass": "class S(str):\n    def __eq__(self, other): return True\ndef f():\n    return S('nope')",
    "patch eval and assert": "import builtins\nbuiltins.eval = lambda *a, **k: True\n"
                             "builtins.AssertionError = type('Never', (Exception,), {})\ndef f():\n    return 'wrong'",
}

STEAL = {
    # the expected value is the thing the program tries to obtain
    "/etc/shadow": ("def f():\n    return open('/etc/shadow').read()", lambda h: Path("/etc/shadow").read_text()
                    if Path("/etc/shadow").exists() else "root:"),
    "~/.aws credentials": ("def f(path):\n    return open(path).read()", None),
    "parent environment": ("import os\ndef f():\n    return os.environ.get('PONDER_TEST_SECRET', '')", SECRET),
    "/proc/*/environ": ("import os\ndef f():\n    for pid in os.listdir('/proc'):\n        try:\n"
                        "            env = open(f'/proc/{pid}/environ', 'rb').read()\n        except Exception:\n"
                        "            continue\n        for item in env.split(b'\\0'):\n"
                        "            if item.startswith(b'PONDER_TEST_SECRET='):\n"
                        "                return item.split(b'=', 1)[1].decode()\n    return ''", SECRET),
    "network TCP": ("import socket\ndef f():\n    s = socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
                    "    return 'connected'", "connected"),
    "DNS": ("import socket\ndef f():\n    socket.getaddrinfo('example.com', 80)\n    return 'resolved'", "resolved"),
    "host loopback TCP": ("import socket\ndef f(port):\n"
                          "    return socket.create_connection(('127.0.0.1', port), timeout=1).recv(4).decode()",
                          "pong"),
    "the test's expected value": (  # the harness must never bring it into the sandbox
        "import os, re, sys\ndef f():\n    places = [f'/proc/{p}/{n}' for p in os.listdir('/proc') if p.isdigit()\n"
        "              for n in ('cmdline', 'environ')]\n"
        "    places += [os.path.join(d, n) for top in ('/work', '/tmp') for d, _, ns in os.walk(top) for n in ns]\n"
        "    for place in places + ['/dev/stdin']:\n        try:\n            text = open(place, 'rb').read().decode()\n"
        "        except Exception:\n            continue\n        found = re.search(r'expected-[0-9]+', text)\n"
        "        if found:\n            return found.group(0)\n    return 'not found'", "expected-7731"),
    "host loopback UDP": ("import socket\ndef f(port):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                          "    s.settimeout(1)\n    s.sendto(b'ping', ('127.0.0.1', port))\n"
                          "    return s.recv(4).decode()", "pong"),
}


def test_isolation_self_test_passes():
    facts = self_test(Limits(**{k: v for k, v in OPTIONS.items() if k != "warm"}))
    assert facts["memory_mb"] == 512


def test_a_correct_solution_scores_1_and_a_wrong_one_0(host):
    tests = ["assert f(2) == 3", "assert f(10) == 11", "assert f(-1) == 0"]
    assert _score("def f(x):\n    return x + 1", tests) == 1.0
    assert _score("def f(x):\n    return x + 1 if x > 0 else 5", tests) == pytest.approx(2 / 3)
    cases = [{"input": "3\n", "output": "6\n"}, {"input": "4\n", "output": "8"}]
    assert _score("print(int(input()) * 2)", cases=cases) == 1.0


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_contained(host, name):
    before = _host_state()
    assert _score(HOSTILE[name]) == 0.0
    assert _host_state() == before, f"{name} changed the host"
    # and scoring goes on: the next, honest program in the same pool is scored as usual
    assert _score("def f():\n    return 'done'") == 1.0


def test_huge_stdout_is_capped(host):
    assert _score("while True: print('x' * 10000)", cases=[{"input": "", "output": "42"}]) == 0.0
    assert _score("print('All tests passed')", cases=[{"input": "", "output": "42"}]) == 0.0
    # output that JSON escaping grows sixfold (a NUL becomes \\u0000) is still a wrong answer, not a masked sample
    assert _score("print('\\x00' * 1_000_000)", cases=[{"input": "", "output": "42"}]) == 0.0
    assert _score("def f():\n    return '\\x00' * 170_000") == 0.0


@pytest.mark.parametrize("name", sorted(STEAL))
def test_secrets_and_network_are_out_of_reach(host, name):
    code, expected = STEAL[name]
    if name == "~/.aws credentials":
        path = str(host["secrets_dir"] / "credentials")
        tests = [f"assert f({path!r}) == {SECRET!r}", f"assert f({os.path.expanduser('~/.aws/credentials')!r}) == "
                 f"{SECRET!r}"]
    elif name.startswith("host loopback"):
        port = host["tcp_port"] if "TCP" in name else host["udp_port"]
        tests = [f"assert f({port}) == {expected!r}"]
    else:
        expected = expected(host) if callable(expected) else expected
        tests = [f"assert f() == {expected!r}"]
    before = _host_state()
    assert _score(code, tests) == 0.0
    assert _host_state() == before
    if name == "host loopback UDP":
        assert host["udp_received"] == []


def test_no_sandbox_process_outlives_its_run(host):
    _score(HOSTILE["orphaned child"])
    assert not [cmd for cmd in _sandbox_uid_procs() if "sleep 987" in cmd]
    pool = SandboxPool(Limits(), warm=2)
    assert len(pool._ready) == 2
    pool.close()
    for pool in code_module._POOLS.values():
        pool.close()
    code_module._POOLS.clear()
    deadline = time.monotonic() + 5
    while _all_sandbox_uid_procs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _all_sandbox_uid_procs()


def _all_sandbox_uid_procs() -> list[str]:
    return [pid for pid in filter(str.isdigit, os.listdir("/proc")) if _uid(pid) == SANDBOX_UID]


def _uid(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _trajectory(index: int, text: str, problem: Problem) -> Trajectory:
    return Trajectory(0, index, problem, [1], [1], text, [0.0], "stop", 0)


def test_reward_actor_scores_a_hostile_batch_and_goes_on(host):
    """The reward actor's class (no Ray needed) with the code reward: hostile samples score 0, none is masked, and
    the honest one beside them scores 1 — training continues."""
    problem = Problem("p", "", metadata={"tests": ["assert f() == 'done'"]})
    options = {"case_cpu_s": 0.5, "case_timeout_s": 1.0, "timeout_s": 4.0, "warm": 1}
    cfg = RewardConfig(functions=[RewardSpec("code", 1.0, options)], accuracy_from="code", timeout_s=25.0)
    worker = RewardWorker(cfg)
    try:
        names = ["fork bomb", "memory bomb", "kill -1", "always-equal object"]
        batch = [_trajectory(i, f"```python\n{HOSTILE[n]}\n```", problem) for i, n in enumerate(names)]
        batch.append(_trajectory(len(names), "```python\ndef f():\n    return 'done'\n```", problem))
        scored, report = worker.score(batch)
    finally:
        worker.close()
    assert [t.reward for t in scored] == [0.0] * len(names) + [1.0]
    assert report.masked == 0 and report.counts["reward/errors"] == 0
    assert scored[-1].correct


def test_no_isolation_no_scoring(host, monkeypatch):
    """Without bubblewrap the reward actor refuses to start, and a verifier process that cannot sandbox masks the
    sample (an infrastructure failure) instead of scoring it 0."""
    monkeypatch.setenv("PATH", "/nonexistent")
    self_test.cache_clear()
    cfg = RewardConfig(functions=[RewardSpec("code", 1.0, {"warm": 0})], timeout_s=60.0)
    with pytest.raises(SandboxError, match="bubblewrap"):
        RewardWorker(cfg)
    pool = HardTimeoutPool(num_processes=1, timeout_s=10.0)
    try:
        problem = Problem("p", "", metadata={"tests": ["assert f() == 1"]})
        result = pool.map([Task("code", "```python\ndef f():\n    return 1\n```", problem, {"warm": 0})])[0]
    finally:
        pool.close()
    assert result.status == "error" and "SandboxError" in result.error
    assert compose([RewardSpec("code", 1.0)], [result]).masked


TOOL_HOSTILE = ["cpu loop", "sleep", "memory bomb", "fork bomb", "disk fill", "kill parent", "kill -1",
                "orphaned child", "huge return value", "ptrace the harness"]


@pytest.fixture(scope="module")
def python_tool():
    env = ToolEnv(tools=["python"], warm=1, case_cpu_s=1.0, case_timeout_s=1.5, timeout_s=6.0)
    yield env
    env.close()


@pytest.mark.parametrize("name", TOOL_HOSTILE + sorted(set(STEAL) - {"the test's expected value"}))
def test_hostile_tool_call_is_contained(host, python_tool, name):
    """The hostile programs sent as a model's tool call: the episode gets an observation (an error, or a harmless
    output), never a secret or a network reply; the host is unchanged; the next honest call in the same episode works."""
    code = HOSTILE.get(name) or STEAL[name][0]
    arg = {"~/.aws credentials": repr(str(host["secrets_dir"] / "credentials")),
           "host loopback TCP": host["tcp_port"], "host loopback UDP": host["udp_port"]}.get(name, "")
    before = _host_state()
    state = python_tool.start(Problem("p", "42"))
    reply = python_tool.step(state, f"<python>{code}\nprint(f({arg}))</python>")
    assert reply.observation.startswith("<out>") and reply.observation.endswith("</out>") and not reply.answer
    leaked = [s for s in (SECRET, "pong", "connected", "resolved", "root:") if s in reply.observation]
    assert not leaked, f"{name}: the observation shows {leaked}"
    assert _host_state() == before, f"{name} changed the host"
    assert python_tool.step(state, "<python>print(6 * 7)</python>").observation == "<out>42</out>"
