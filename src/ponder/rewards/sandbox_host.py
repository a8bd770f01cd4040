"""What the machine or container around the sandbox allows it: the tasks its uid already runs (RLIMIT_NPROC counts
them) and, when bubblewrap cannot start, the cause in this container and the setting that fixes it."""

from __future__ import annotations

import os
from pathlib import Path


def tasks_of(uid: int) -> int:
    """Processes and threads whose real uid is `uid` in this pid namespace, now: what RLIMIT_NPROC counts, less the
    sandboxes' own programs (each sandbox has a pid namespace of its own). So the caller's tasks are not counted
    against a sandbox, and all sandboxes together still share one `processes`: one cannot start with the room that
    another's programs already took."""
    own = os.readlink("/proc/self/ns/pid")
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if line.startswith(("Uid:", "Threads:")))
            if "Uid" not in fields or int(fields["Uid"].split()[0]) != uid:
                continue
            if os.readlink(f"/proc/{pid}/ns/pid") == own:
                count += int(fields.get("Threads", "1"))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return count


def why_bwrap_failed(stderr: str) -> str:
    """What keeps bubblewrap from starting in this container, and the setting that fixes it, from bwrap's own words
    and what the kernel says about this process ("" when neither matches a known cause). bwrap's message for a
    seccomp filter that forbids namespaces blames the kernel; this says which it is."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return "?"

    if "Can't mount proc" in stderr:
        return ("\n  cause: this container's /proc is masked (parts of it covered, the container runtime's default), "
                "and the kernel lets a user namespace mount a fresh /proc only where the whole of /proc is "
                "visible.\n  fix: on Kubernetes set reward.userNamespaces=true (the chart gives the reward pods "
                "hostUsers: false and procMount: Unmasked; Kubernetes >= 1.33, or 1.30+ with the "
                "UserNamespacesSupport and ProcMountType feature gates); under Docker, --security-opt "
                "systempaths=unconfined. docs/deploy.md, \"The reward (sandbox) pods\".")
    if "Resource temporarily unavailable" in stderr:
        return ("\n  cause: no more processes for this uid or container (RLIMIT_NPROC, or the pod's pids limit: the "
                "kubelet's podPidsLimit); lower the reward pool's processes_per_worker or raise the limit.")
    if not any(words in stderr for words in ("namespace", "uid map", "setting up uid", "unshare", "clone")):
        return ""
    status = dict(line.split(":\t", 1) for line in read("/proc/self/status").splitlines() if ":\t" in line)
    causes = []
    if status.get("Seccomp", "0").strip() == "2":
        causes.append("this process runs under a seccomp filter (a runtime's default profile forbids creating "
                      "namespaces without CAP_SYS_ADMIN): give the reward pods a seccomp profile that allows "
                      "unshare, clone with namespace flags, mount, umount2, pivot_root and setns "
                      "(reward.seccompProfile: Localhost)")
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        causes.append("AppArmor restricts unprivileged user namespaces on this node "
                      "(kernel.apparmor_restrict_unprivileged_userns=1): give the reward pods an AppArmor profile "
                      "that allows userns (reward.appArmorProfile) or set the sysctl to 0 on the node")
    if read("/proc/sys/user/max_user_namespaces") == "0":
        causes.append("user namespaces are off on this node (user.max_user_namespaces=0): raise it on the node")
    if not causes:
        return ""
    return ("\n  cause: bubblewrap cannot create the sandbox's user namespace; "
            + "; or ".join(causes) + ". docs/deploy.md, \"The reward (sandbox) pods\".")
