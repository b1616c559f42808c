"""The exit-code contract of every command line here (``cvvae``, ``cvvae.training``, ``finetune``, the app,
batch): 0 done; 2 bad input or arguments, as one ``error:`` line on stderr; 1 unexpected failure, with a
traceback. Lower layers' commands import this, never the front ends' modules."""

from __future__ import annotations

import argparse
import sys
import traceback

from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse with the exit-code contract: a bad argument is one ``error:`` line (and ``--help``'s hint), exit 2."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def run_command(fn) -> int:
    """Run ``fn`` with the exit-code contract of every command line here: 0, 2 with one ``error:`` line, 1."""
    try:
        return int(fn() or 0)
    except UserError as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
