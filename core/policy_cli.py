"""vmboot-policy: policies/tool.py, with the commands that need the device runtime.

``prove`` runs each kind's real device process through the exercise
(core/exercise.py) under strace, then proves its policy from the trace as
``check --trace`` does; ``kinds`` lists the registry. They live here because
the policies sit below the devices that install them, and the runtime above
both.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from vmboot.devices import registry
from vmboot.policies import tool
from vmboot.policies.compiler import COMMON, SUFFIX, load_policy
from vmboot.policies.trace import prove, read_traces

from . import exercise


def prove_command(args) -> int:
    names = args.names or [k.name for k in registry.kinds()]
    for name in names:
        tool._known(name, args.policies)
    with tempfile.TemporaryDirectory(prefix="vmboot-prove-") as directory:
        traces = Path(directory)
        for name in names:
            r = exercise.run(name, "kill", traces, args.policies)
            print(f"{name}: exercised: {r}")
        proof = prove({n: load_policy(n, args.policies) for n in names}, read_traces(traces, names))
        if set(names) != {k.name for k in registry.kinds()}:
            # A common line is needed when any kind needs it: some kinds alone cannot prove one unused.
            proof.unused = [r for r in proof.unused if not r.where.startswith(COMMON + SUFFIX)]
            print(f"{COMMON}{SUFFIX}: not proven (that needs every kind: vmboot-policy prove)")
        tool.report(proof, traces)
    return tool.OK if proof.clean else tool.FAILED


def kinds_command(args) -> int:
    for kind in registry.kinds():
        windows = ", ".join(f"{w.label} {w.base:#x}+{w.size}" for w in kind.windows) or "a PCI BAR (virtio)"
        print(f"{kind.name:<12} restart {kind.restart.value:<9} {kind.attach.value:<8} {windows:<44} {kind.policy}")
    return tool.OK


def main(argv: list[str] | None = None) -> int:
    try:
        return tool.main(argv, runtime={"prove": prove_command, "kinds": kinds_command})
    except exercise.ExerciseFailed as err:
        print(f"vmboot-policy: {err}", file=sys.stderr)
        return tool.FAILED


if __name__ == "__main__":
    sys.exit(main())
