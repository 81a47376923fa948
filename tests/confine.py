"""Run a command under a systemd unit's process restrictions, without systemd:

    python tests/confine.py '{"syscalls": [...], "families": [...], "umask": 63}' CMD ...

what SystemCallFilter= (the expanded allow list; native architecture only, like
SystemCallArchitectures=native), RestrictAddressFamilies=, MemoryDenyWriteExecute=
(the kernel's PR_SET_MDWE, Linux 6.3+) and UMask= do, then exec CMD. A call outside
the list kills the process (SIGSYS), which is stricter than the unit's EPERM: a
blocked call cannot go unnoticed. Capabilities and no_new_privs are setpriv's job
(test_systemd.py puts it in front). Needs libseccomp (systemd depends on it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import socket
import sys

PR_SET_MDWE, MDWE_REFUSE_EXEC_GAIN = 65, 1
SCMP_ACT_KILL_PROCESS, SCMP_ACT_ALLOW = 0x80000000, 0x7FFF0000
SCMP_CMP_EQ = 4


class ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def confine(syscalls: list[str], families: list[str], umask: int) -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    def allow(name: str, *conditions: ArgCmp) -> None:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return  # not a system call of this architecture
        array = (ArgCmp * len(conditions))(*conditions) if conditions else None
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, len(conditions), array):
            sys.exit(f"confine: cannot allow {name}")

    ctx = lib.seccomp_init(SCMP_ACT_KILL_PROCESS)
    for name in sorted(set(syscalls) - {"socket"}):
        allow(name)
    if "socket" in syscalls:
        for family in families:
            allow("socket", ArgCmp(0, SCMP_CMP_EQ, getattr(socket, family), 0))

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(f"confine: PR_SET_MDWE: {os.strerror(ctypes.get_errno())}")
    os.umask(umask)
    if lib.seccomp_load(ctx):
        sys.exit("confine: seccomp_load failed")


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    confine(settings["syscalls"], settings["families"], settings["umask"])
    os.execvp(sys.argv[2], sys.argv[2:])
