"""The device zygote: every device of a VM is forked from one warm interpreter.

A device started as a new Python process pays for an interpreter and the
imports of everything it runs: about 50 ms of CPU each, measured, and at boot
that CPU is taken from the guest's vCPU (bench/exits.py). So the core starts
one zygote per VM (core/supervisor/zygote.py):
``python -m vmboot.devices.process.zygote --ctl-fd N [--kind-module M ...]``.
It imports every registered device kind (devices/registry.py) and what they
run, then serves one SOCK_SEQPACKET channel:

    core -> zygote   [SPAWN, seq, kind, options, fd names] + the descriptors (SCM_RIGHTS)
    zygote -> core   [REPLY, seq, pid]  or  [ERROR, seq, why]
    zygote -> core   [EXITED, pid, returncode]   (returncode -N: killed by signal N)

For each SPAWN it forks. The child closes what is the zygote's and runs
devices/process/main.run, the same code a device started by hand runs: namespaces,
the reaper, the sandbox. The zygote closes its copies of the descriptors once
the child has them, so it never holds a device's memory, disk or channels, and
no device inherits another's. It watches each child through a pidfd and reports
its end. It dies with the core (PR_SET_PDEATHSIG), and its children with it; if
the core hangs up, it exits.

The zygote itself is not sandboxed: it creates its children's namespaces. It
runs no device model, and reads nothing but the core's messages, each checked
(ipc/protocol.py). Its children share its address-space layout, as the
children of Android's and Chromium's zygotes do; a device learns nothing from
that it could use against another, as devices have no channel to each other.
"""
from __future__ import annotations

import argparse
import os
import select
import sys

from vmboot.devices import registry
from vmboot.ipc.channel import Channel, ChannelClosed
from vmboot.ipc.protocol import SCHEMA, SEQ, Msg, ProtocolError

from . import main as process
from . import sandbox

EXIT_SOFTWARE = process.EXIT_SOFTWARE


def options(kind: str, opts: dict, names: list[str], fds: list[int]) -> process.Options:
    """A SPAWN's fields as a device's options; a ProtocolError says what is wrong."""
    if kind not in {k.name for k in registry.kinds()}:
        raise ProtocolError(f"unknown device kind {kind!r}")
    if len(names) != len(fds) or len(set(names)) != len(names):
        raise ProtocolError(f"{len(fds)} descriptors for the names {names}")
    by_name = dict(zip(names, fds))
    if "ctl" not in by_name or "evt" not in by_name:
        raise ProtocolError("a device needs its ctl and evt channels")
    root, seccomp, fsize, policies = (opts.get(k) for k in ("root", "seccomp", "fsize", "policies"))
    if (type(root) is not str or seccomp not in process.SECCOMP_MODES or type(fsize) is not int or fsize < 0
            or type(policies) is not str or set(opts) != {"root", "seccomp", "fsize", "policies"}):
        raise ProtocolError(f"bad options {opts}")
    ctl, evt = by_name.pop("ctl"), by_name.pop("evt")
    return process.Options(kind, ctl, evt, root, by_name, seccomp, fsize, policies)


class Zygote:
    def __init__(self, ctl: Channel):
        self.ctl = ctl
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.poller = select.poll()
        self.poller.register(ctl.fileno(), select.POLLIN)

    def serve(self) -> None:
        while True:
            for fd, _ in self.poller.poll():
                if fd == self.ctl.fileno():
                    self._request()
                else:
                    self._ended(fd)

    def _request(self) -> None:
        try:
            msg, fds = self.ctl.recv_with_fds()
        except ChannelClosed:
            os._exit(0)  # the core is gone; the children follow through PR_SET_PDEATHSIG
        except ProtocolError as err:
            self.ctl.send(Msg.ERROR, None, str(err))
            return
        seq = msg[1] if SCHEMA[msg[0]][:1] == (SEQ,) else None  # a request's reply echoes its number
        try:
            if msg[0] is not Msg.SPAWN:
                raise ProtocolError(f"the zygote does not take {msg[0].name}")
            reply = [Msg.REPLY, seq, self._spawn(options(*msg[2:], fds))]
        except ProtocolError as err:
            reply = [Msg.ERROR, seq, str(err)]
        finally:
            for fd in fds:
                os.close(fd)  # the child has its copies; closed before the reply, which says they are
        self.ctl.send(*reply)

    def _spawn(self, opts: process.Options) -> int:
        pid = os.fork()
        if pid == 0:
            try:
                for pidfd in self.children:
                    os.close(pidfd)
                self.ctl.close()
                process.run(opts)  # never returns
            finally:
                os._exit(EXIT_SOFTWARE)
        pidfd = os.pidfd_open(pid)  # a zombie has one too: nothing is missed
        self.children[pidfd] = pid
        self.poller.register(pidfd, select.POLLIN)
        return pid

    def _ended(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self.ctl.send(Msg.EXITED, pid, os.waitstatus_to_exitcode(status))


def main(argv: list[str] | None = None) -> None:
    sys.excepthook = process.last_words("device zygote")
    p = argparse.ArgumentParser(prog="vmboot-zygote")
    p.add_argument("--ctl-fd", type=int, required=True)
    p.add_argument("--kind-module", action="append", default=[], metavar="MODULE",
                   help="a module that registers a device kind from outside devices/ (the core's registry has it)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    sandbox.die_with_parent()  # with the core's spawner thread
    sandbox.set_name("vmboot-zygote")
    registry.load(args.kind_module)  # every kind, and every model it builds, imported before the first fork
    try:
        Zygote(Channel.from_fd(args.ctl_fd)).serve()
    except ChannelClosed:
        os._exit(0)


if __name__ == "__main__":
    main()
