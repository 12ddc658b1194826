"""The `tokenprune` command line. Subcommands live in their own modules; each provides
`add_arguments(parser)`, `command(args, console) -> exit code` and optionally `USER_ERRORS` (exception
types reported as one line with exit code 2, like every `TokenpruneError`), and is listed in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import TokenpruneError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tokenprune.demo", "compare the unpruned model with FastV, VTW and ST3 on one input"),
    "show": ("tokenprune.show", "draw which visual tokens each strategy keeps at each cut layer, over the image (PNG)"),
    "list": ("tokenprune.catalog", "list every registered strategy, part and adapter with its parameters"),
    "compare": ("tokenprune.compare", "run the baseline and every strategy of a config file; write tables and plots"),
    "bench": ("tokenprune.bench", "time the baseline and strategies side by side on fixed model shapes (ratios)"),
}

EXIT_USAGE = 2  # bad arguments, missing files, unsupported models: what argparse uses too


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenprune",
        description="Training-free visual token pruning (ST3, FastV, VTW) for multimodal LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"tokenprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sub_parser)
    return parser


def _output_console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=140)  # piped / captured: wide enough for the tables
    return console


def main(argv: list[str] | None = None, *, console: Console | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 usage / input error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 and a usage line on bad arguments
    module = importlib.import_module(args._module)
    errors = Console(stderr=True)
    prefix = f"tokenprune {args.command}: error:"
    try:
        return module.command(args, console or _output_console())
    except (TokenpruneError, *getattr(module, "USER_ERRORS", ())) as exc:
        errors.print(f"[bold red]{prefix}[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        errors.print(f"{prefix} interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
