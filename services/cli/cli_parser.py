"""argparse as the webb commands use it: a bad flag is one line on stderr (exit 2), help
keeps the example-led descriptions as written, no abbreviated long flags."""
from __future__ import annotations

import argparse
import textwrap
import sys


class CLIParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # pflag knows no abbreviations either
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def _get_value(self, action, arg_string):  # type: ignore[no-untyped-def]
        # Hubble's wording for a value a flag's type rejects.
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError as e:
            name = ", ".join(action.option_strings) or action.metavar or action.dest
            raise argparse.ArgumentError(
                None, f'invalid argument "{arg_string}" for "{name}" flag: {e.message}') from None

    # Set by main() to the command being run, so the top-level parser's complaints
    # (unrecognized arguments) point at that command's help.
    command_hint = ""

    def error(self, message: str):  # type: ignore[override]
        prog = self.prog
        if self.command_hint and " " not in prog:
            prog = f"{prog} {self.command_hint}"
        sys.stderr.write(f"Error: {message} (see '{prog} --help')\n")
        sys.exit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)

    def _split_lines(self, text: str, width: int) -> list[str]:
        # Help with explicit line breaks (tables of types, time layouts) is kept as
        # written; other help is wrapped without breaking flag names at hyphens.
        if "\n" in text:
            return text.splitlines()
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False) or [""]


def add_command(sub: argparse._SubParsersAction, name: str, summary: str, description: str,
                examples: str, **kwargs) -> CLIParser:
    """A subcommand whose help starts with what it does and ends with examples."""
    return sub.add_parser(name, help=summary, description=description,
                          epilog="examples:\n" + examples.strip("\n"), **kwargs)
