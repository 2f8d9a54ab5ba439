"""The ``edged`` command line: one entry point, one subcommand per job.

Subcommand modules are imported only when that subcommand runs, so
``edged --help`` and ``edged tail`` stay fast and never touch a runtime.
Each module exposes ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Dict, List, Optional, Tuple

from edged import __version__
from edged.errors import EXIT_CONFIG, ConfigError, EdgedError

#: name -> (module, one-line help). Order is the order shown by ``edged --help``.
COMMANDS: Dict[str, Tuple[str, str]] = {
    "run": ("edged.daemon", "run the daemon: sensors -> local or fog -> decision log"),
    "fog": ("edged.offload.fog_server", "run a fog node serving offloaded inputs over ZeroMQ"),
    "profile": ("edged.profile", "measure WCET and accuracy of each model on this device"),
    "models": ("edged.models", "list the model catalogue and verify every sha256"),
    "sim": ("edged.sim", "simulate a sensor over serial, a pty or ZeroMQ"),
    "tail": ("edged.tail", "follow the decision or power log, with a summary"),
    "report": ("edged.report", "summarise a log directory per model and decision"),
    "check-config": ("edged.config", "validate a config file (exit 0 if valid, 78 if not)"),
    "keys": ("edged.offload.keys", "generate CURVE key pairs for the edge<->fog link"),
    "compare": ("edged.compare", "merge profile exports of M devices into the N x M table"),
    "export-fog": ("edged.export_fog", "export the models for Triton, MLServer or KServe fog nodes"),
}


class _OneLineHelp(argparse.HelpFormatter):
    """argparse measures subcommand names at a shallower indent than it prints them, so the longest
    ('check-config') would wrap onto its own line; measure them where they are printed."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            longest = max((len(a.dest) for a in action._get_subactions()), default=0)
            self._action_max_length = max(self._action_max_length, longest + self._current_indent + 4)


def _chosen_command(argv: List[str]) -> Optional[str]:
    for tok in argv:
        if tok in COMMANDS:
            return tok
        if not tok.startswith("-"):
            return None
    return None


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edged",
        description="On-device ML offloading daemon: runs each sensor input locally or on a fog node.",
        epilog="Run 'edged COMMAND --help' for the options of one command.",
        formatter_class=_OneLineHelp,
    )
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen_command(argv)
    for name, (module, help_line) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line[0].upper() + help_line[1:] + ".")
        if name == chosen:
            try:
                mod = importlib.import_module(module)
            except ImportError as exc:  # a subcommand whose module is missing must not break the others
                p.set_defaults(_unavailable=f"'edged {name}' is unavailable: {exc}")
                continue
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
    return parser


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2) if verbosity else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_unavailable", None):
        print(f"edged: {args._unavailable}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        setup_logging(args.verbose)
    try:
        return int(args._main(args) or 0)
    except ConfigError as exc:  # a distinct status: the units do not restart on it
        print(f"edged {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EdgedError as exc:
        print(f"edged {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `edged tail | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
