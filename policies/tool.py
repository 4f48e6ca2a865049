"""vmboot-policy: show, check and test the device processes' seccomp policies.

    vmboot-policy show NAME            the effective policy (common + device), and the compiled size
    vmboot-policy check [--trace DIR]  every policy is well formed, commented, and refuses what it must;
                                       with DIR (strace output, DIR/NAME.strace per device), every listed
                                       syscall was needed and every syscall used was listed
    vmboot-policy test [NAME ...]      call what each policy allows and what it must kill, in a child
    vmboot-policy prove [NAME ...]     run each device's real process, sandboxed, under strace, doing real
                                       work (core/exercise.py), then check the traces as check --trace does
    vmboot-policy kinds                every registered device kind: its restart policy, windows and policy

Exit status: 0 clean, 1 a check failed, 2 usage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from vmboot.policies.compiler import COMMON, POLICY_DIR, SUFFIX, device_names, filter_size, load_policy, policy_problems
from vmboot.policies.probe import Check, ProbeError, run_checks
from vmboot.policies.rules import UNTRACEABLE, PolicyError
from vmboot.policies.trace import Proof, TraceError, prove, read_traces

OK, FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _known(name: str, directory: Path) -> str:
    if name not in device_names(directory):
        raise UsageError(f"no policy {name!r} in {directory} (known: {', '.join(device_names(directory))})")
    return name


# -- show ------------------------------------------------------------------------------------------
def show(name: str, directory: Path) -> int:
    policy = load_policy(_known(name, directory), directory)
    print(f"# {name}: {' + '.join(policy.files)}: {len(policy.rules)} lines, {len(policy.syscalls())} syscalls; "
          f"compiled filter {filter_size(policy)} BPF instructions (default action: kill the process)")
    current = None
    for rule in policy.rules:
        file = rule.where.split(":")[0]
        if file != current:
            current = file
            print(f"\n# -- {file}")
        statement = f"{rule.syscall:<12} {rule.text}".rstrip()
        print(f"{statement:<52} # {rule.comment}")
    return OK


# -- check -----------------------------------------------------------------------------------------
def check(trace_dir: Path | None, directory: Path) -> int:
    names = device_names(directory)
    problems: list[str] = []
    for name in [COMMON] + names:
        problems += [p for p in policy_problems(name, directory) if p not in problems]
    for line in problems:
        print(line)
    print(f"{len(names)} device policies and {COMMON}{SUFFIX}: "
          + (f"{len(problems)} problem(s)" if problems else "well formed, every line commented, nothing forbidden"))
    if problems:
        return FAILED
    if trace_dir is None:
        return OK
    if not trace_dir.is_dir():
        raise UsageError(f"{trace_dir} is not a directory")
    policies = {n: load_policy(n, directory) for n in names}
    proof = prove(policies, read_traces(trace_dir, names))
    report(proof, trace_dir)
    return OK if proof.clean else FAILED


def report(proof: Proof, trace_dir: Path) -> None:
    for name, trace in proof.traced.items():
        used = trace.used()
        files = f" and {trace.files - 1} more" if trace.files > 1 else ""
        print(f"{name}: {trace.path.name}{files}: {len(used)} syscalls, {sum(used.values())} calls after seccomp")
    for name in proof.untraced:
        print(f"untraced: {name} (no {trace_dir / (name + '.strace')}): its lines are unproven")
    for rule in proof.unused:
        print(f"unused: {rule.where} {rule.syscall} {rule.text}".rstrip() + ": no traced device called it so")
    for rule in proof.untraceable:
        marker = rule.untraceable
        print(f"{marker} {rule.where} {rule.syscall} {rule.text}".rstrip()
              + f": {UNTRACEABLE[marker]} ({rule.comment.removeprefix(marker).strip()})")
    for name, missing in proof.missing.items():
        for syscall, count in sorted(missing.items()):
            print(f"missing: {name} called {syscall} {count} time(s); {name}{SUFFIX} does not allow it")
    for name, refused in proof.refused.items():
        for syscall, examples in sorted(refused.items()):
            print(f"refused: {name} called {examples[0]}: no line for {syscall} allows these arguments")
    print("traces: every listed syscall was needed and every syscall used was listed" if proof.clean
          else "traces: the policies and the traces disagree")


# -- test ------------------------------------------------------------------------------------------
def table(name: str, checks: list[Check]) -> str:
    rows = [("RESULT", "KIND", "CALL", "EXPECT", "OUTCOME", "AUDIT", "WHY")]
    for c in checks:
        call = c.call if len(c.call) <= 46 else c.call[:45] + "…"
        rows.append(("ok" if c.passed else "FAIL", c.kind, call, c.expect, c.outcome, c.audit or "-", c.where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    passed = sum(c.passed for c in checks)
    lines = [f"{name}: {len(checks)} checks, {passed} passed" + ("" if passed == len(checks) else
                                                                 f", {len(checks) - passed} FAILED")]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join(lines)


def test(names: list[str], directory: Path) -> int:
    failed = False
    for name in names or device_names(directory):
        checks = run_checks(_known(name, directory), directory)
        print(table(name, checks))
        failed |= not all(c.passed for c in checks)
    return FAILED if failed else OK


# -- main ------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(USAGE, f"vmboot-policy: {message} (see vmboot-policy --help)\n")


# The commands that start device processes (prove, kinds) need the runtime, which sits above the
# policies (the devices install them): vmboot-policy is vmboot.core.policy_cli, which hands them in.
Runtime = dict[str, Callable]


def main(argv: list[str] | None = None, runtime: Runtime | None = None) -> int:
    parser = _Parser(prog="vmboot-policy", description=__doc__.split("\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--policies", type=Path, default=POLICY_DIR, metavar="DIR",
                        help="the folder of .policy files (default: the installed ones)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("show", help="print the effective policy of a device").add_argument("name")
    checker = commands.add_parser("check", help="check every policy; with --trace, against strace output")
    checker.add_argument("--trace", type=Path, metavar="DIR", help="a folder of NAME.strace files")
    commands.add_parser("test", help="run the firecracker-style checks").add_argument("names", nargs="*",
                                                                                      metavar="NAME")
    if runtime:
        commands.add_parser("prove", help="trace each device's real process doing real work, and check it"
                            ).add_argument("names", nargs="*", metavar="NAME")
        commands.add_parser("kinds", help="list the registered device kinds")
    args = parser.parse_args(argv)
    try:
        if not args.policies.is_dir():
            raise UsageError(f"{args.policies} is not a directory")
        if args.command == "show":
            return show(args.name, args.policies)
        if args.command == "check":
            return check(args.trace, args.policies)
        if args.command in ("prove", "kinds"):
            return runtime[args.command](args)
        return test(args.names, args.policies)
    except UsageError as err:
        print(f"vmboot-policy: {err}", file=sys.stderr)
        return USAGE
    except (PolicyError, ProbeError, TraceError, OSError) as err:
        print(f"vmboot-policy: {err}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
