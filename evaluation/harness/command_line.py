"""What every script and command shares on the command line: one-line usage errors and the exit-code policy.

Exit code 2: a usage problem (a bad flag, path, model, dataset or output directory), reported as one line. Exit code
1: anything else, which is a bug: one line that says so and how to see the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence


class UsageError(ValueError):
    """A bad command line or configuration: reported as one line, exit code 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and the default of every option that takes a value in its help (unless the help
    states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or action.nargs == 0 or "default" in text \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line (exit code 2), with :class:`HelpFormatter`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def default_threads() -> int:
    """torch CPU threads when ``--num_threads`` is not given: the cores this process may use, shared among the
    processes a launcher started on this machine (``LOCAL_WORLD_SIZE``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


#: ``--num_threads`` help, the same on every command.
THREADS_HELP = "torch CPU threads (default: the cores available, shared among this machine's processes)"


#: Set (to anything but ``""`` or ``"0"``) by ``--debug``: errors are raised with their traceback.
DEBUG_VARIABLE = "HF_SPARSE_ATTACK_DEBUG"


def debugging() -> bool:
    """Whether ``--debug`` (or :data:`DEBUG_VARIABLE`) asks for tracebacks instead of one-line errors."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


@contextlib.contextmanager
def debug_mode(enabled: bool) -> Iterator[None]:
    """Within the block, :func:`debugging` is true if ``enabled`` (or already was); restored afterwards."""
    previous = os.environ.get(DEBUG_VARIABLE)
    if enabled:
        os.environ[DEBUG_VARIABLE] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DEBUG_VARIABLE, None)
        else:
            os.environ[DEBUG_VARIABLE] = previous


#: The exceptions that mean bad input or environment (exit code 2): a value the library refuses (``ValueError``, its
#: convention for bad arguments, which a bad flag, dataset, model or output directory raise as subclasses:
#: ``UsageError``, ``DataError``, ``TaskLoadError``, ``OutputDirError``), a file that cannot be read or written
#: (``OSError``). Anything else, an ``AuditError`` included, is a bug (exit code 1).
USAGE_ERRORS = (ValueError, OSError)


#: What a collective raises in a process whose peer has stopped (gloo, NCCL): that process's own error is the cause.
_PEER_STOPPED = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
                 "NCCL communicator was aborted")


def report(prog: str, err: BaseException) -> int:
    """Print ``err`` as one line on stderr; return its exit code: 2 for bad input, 1 for a bug. Under a launcher
    of several processes the line names the process (``[rank R/N]``), and a collective that failed because another
    process stopped says so instead of reporting a bug."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prog = f"{prog} [rank {os.environ.get('RANK', '0')}/{world}]" if world > 1 else prog
    if isinstance(err, USAGE_ERRORS):
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    if world > 1 and any(sign in str(err) for sign in _PEER_STOPPED):
        print(f"{prog}: stopped: another process failed (its error is above)", file=sys.stderr)
        return 1
    print(f"{prog}: internal error (a bug; please report it): {type(err).__name__}: {message}; rerun with --debug "
          "for the traceback", file=sys.stderr)
    return 1


def run_script(parser: Parser, body: Callable[[argparse.Namespace], dict | None],
               argv: Sequence[str] | None = None) -> dict | None:
    """Parse ``argv`` with ``parser`` and run ``body``. A bad input is one line on stderr and exit code 2, any other
    failure one line saying it is a bug and exit code 1 (``SystemExit``); with ``--debug`` it is raised as is."""
    args = parser.parse_args(argv)
    with debug_mode(getattr(args, "debug", False)):
        try:
            return body(args)
        except Exception as err:
            if debugging():
                raise
            raise SystemExit(report(parser.prog, err)) from None
