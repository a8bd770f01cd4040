"""The sandbox's start-up self-test under emulations of a container runtime's defaults: the reward pod's unprivileged
uid, a masked /proc (/dev/null over /proc/kcore, as containerd and Docker do, in a mount namespace of the test's own)
and a seccomp filter that forbids namespaces as RuntimeDefault does without CAP_SYS_ADMIN. Each must fail at start
with the cause and the chart setting that fixes it (docs/deploy.md); without them, the same uid passes. Needs root
to build the emulation (the self-test itself then runs unprivileged)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bwrap") is None or shutil.which("unshare") is None,
                                reason="building the runtime emulation needs root, bubblewrap and util-linux unshare")

POD_UID = 1000  # the chart's reward.runAsUser

# RuntimeDefault's rule for a container without CAP_SYS_ADMIN, as a classic BPF filter (x86_64): clone with any
# namespace flag, unshare, mount, umount2, pivot_root and setns fail with EPERM; clone3 with ENOSYS (so callers fall
# back to clone, as runtimes do).
RUNTIME_DEFAULT_LIKE = """
import ctypes, struct
LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
prog = [(LD, 0, 0, 4), (JEQ, 1, 0, 0xC000003E), (RET, 0, 0, ALLOW), (LD, 0, 0, 0),
        (JEQ, 0, 3, 56), (LD, 0, 0, 16), (JSET, 0, 1, NAMESPACE_FLAGS), (RET, 0, 0, EPERM), (RET, 0, 0, ALLOW),
        (JEQ, 0, 1, 435), (RET, 0, 0, ENOSYS)]
for nr in (272, 165, 166, 155, 308):
    prog += [(JEQ, 0, 1, nr), (RET, 0, 0, EPERM)]
prog.append((RET, 0, 0, ALLOW))
raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
buf = ctypes.create_string_buffer(raw)
fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
"""


# What containerd and Docker do to a container's /proc by default (their masked and read-only path lists): files
# covered by /dev/null, directories by an empty read-only tmpfs, some remounted read-only. At least one must exist.
MASK_PROC = """
masked=0
for p in /proc/acpi /proc/asound /proc/interrupts /proc/kcore /proc/keys /proc/latency_stats /proc/timer_list \
         /proc/timer_stats /proc/sched_debug /proc/scsi; do
  if [ -d "$p" ]; then mount -t tmpfs -o ro tmpfs "$p" && masked=1
  elif [ -e "$p" ]; then mount --bind /dev/null "$p" && masked=1; fi
done
for p in /proc/bus /proc/fs /proc/irq /proc/sys /proc/sysrq-trigger; do
  [ -e "$p" ] && mount --bind "$p" "$p" && mount -o remount,bind,ro "$p"
done
[ "$masked" = 1 ] || { echo "nothing to mask under /proc" >&2; exit 3; }
"""


def self_test_as_pod(masked_proc: bool = False, seccomp: bool = False) -> str:
    """Run the sandbox's self-test as the reward pod's uid, under the chosen emulation; 'ok' or the error."""
    script = textwrap.dedent(f"""
        import ctypes, os, struct  # everything imported while still root: the interpreter may live under /root
        from ponder.rewards.sandbox import SandboxError, self_test
        os.setgroups([]); os.setgid({POD_UID}); os.setuid({POD_UID})
        {"exec(" + repr(RUNTIME_DEFAULT_LIKE) + ")" if seccomp else ""}
        try:
            self_test()
            print("ok")
        except SandboxError as e:
            print(e)
    """)
    python = [sys.executable, "-c", script]
    if masked_proc:
        python = ["unshare", "--mount", "--propagation", "private", "sh", "-c", MASK_PROC + 'exec "$@"', "sh",
                  *python]
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}
    done = subprocess.run(python, capture_output=True, text=True, timeout=120, env=env, cwd="/tmp")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_pods_uid_passes_where_namespaces_and_proc_are_allowed():
    assert self_test_as_pod() == "ok"


def test_a_masked_proc_fails_at_start_naming_the_chart_setting():
    message = self_test_as_pod(masked_proc=True)
    assert "the sandbox did not start" in message and "Can't mount proc" in message
    assert "/proc is masked" in message and "reward.userNamespaces=true" in message


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the emulated filter is written for x86_64")
def test_a_runtime_default_seccomp_profile_fails_at_start_naming_the_chart_setting():
    message = self_test_as_pod(seccomp=True)
    assert "the sandbox did not start" in message
    assert "seccomp filter" in message and "reward.seccompProfile: Localhost" in message


FORK_COUNT = """
import os, time
made = 0
for _ in range(80):
    try:
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        made += 1
    except OSError:
        break
print(made)
"""


def test_the_pods_own_processes_do_not_use_up_the_sandboxes_process_limit():
    """In a reward pod the sandbox shares its uid with Ray's processes and threads (~200 in a real pod): with 60 of
    them running and a limit of 24, a sandbox still starts, and its program still gets no more than 24 tasks."""
    script = textwrap.dedent(f"""
        import os, signal, subprocess, sys
        from ponder.rewards.sandbox import Limits, Sandbox, SandboxError
        os.setgroups([]); os.setgid({POD_UID}); os.setuid({POD_UID})
        ray_like = subprocess.Popen(["/usr/bin/python3", "-c", "import threading, time\\n"
                                     "[threading.Thread(target=time.sleep, args=(60,), daemon=True).start() "
                                     "for _ in range(60)]\\nprint(1, flush=True)\\ntime.sleep(60)"],
                                    stdout=subprocess.PIPE)
        ray_like.stdout.readline()  # its threads are running
        try:
            with Sandbox(Limits(processes=24)) as box:
                print(box.job({FORK_COUNT!r}, "stdio").run("").body.strip())
        except SandboxError as e:
            print("error:", e)
        finally:
            ray_like.kill()
    """)
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                          cwd="/tmp")
    assert done.returncode == 0, done.stderr
    made = done.stdout.strip()
    assert made.isdigit(), made
    assert 0 < int(made) < 24  # the harness, zygote and program take a few of the 24


def test_sandboxes_together_still_share_one_process_limit():
    """A hostile pair: the first sandbox's program takes what it can and holds it while a second sandbox starts. The
    second must not get a fresh `processes` on top (it would, if the first one's programs counted as the caller's
    own tasks): together they stay within one limit."""
    hold = FORK_COUNT.replace("time.sleep(2)", "time.sleep(6)").replace("print(made)", "print(made)\ntime.sleep(4)")
    script = textwrap.dedent(f"""
        import os, threading, time
        from ponder.rewards.sandbox import Limits, Sandbox, SandboxError
        os.setgroups([]); os.setgid({POD_UID}); os.setuid({POD_UID})
        limits = Limits(processes=24, case_timeout_s=7.0, timeout_s=30.0)
        out = {{}}

        def first():
            with Sandbox(limits) as box:
                out["first"] = box.job({hold!r}, "stdio").run("").body.strip()
        holder = threading.Thread(target=first)
        holder.start()
        time.sleep(3)  # its program holds its processes now
        try:
            with Sandbox(limits) as box:
                out["second"] = box.job({FORK_COUNT!r}, "stdio").run("").body.strip()
        except SandboxError as e:  # no room left even to start: the limit is shared
            out["second"] = "0" if "Resource temporarily unavailable" in str(e) else repr(str(e))
        holder.join()
        print(out["first"], out["second"])
    """)
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                          cwd="/tmp")
    assert done.returncode == 0, done.stderr
    first, second = (int(x) for x in done.stdout.split())
    assert first > 12 and first + second < 24, (first, second)
