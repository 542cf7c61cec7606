"""Command line: `edge-certd COMMAND`.

- `main`: the parser and `main`, the only place that turns errors into exit codes;
- `render`: the text output of `list`, `status` and `inspect`;
- `client`: asks the running daemon through the control socket;
- `verify`: `verify`'s arguments and output;
- `containers`: what `container-args` prints.

Importing this package loads neither the daemon nor the sync engine nor the targets: each
command imports what it needs when it runs.
"""

from edge_certd.cli.main import EXIT_APPLY_FAILED, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, build_parser, main

__all__ = ["EXIT_APPLY_FAILED", "EXIT_OK", "EXIT_REJECTED", "EXIT_USAGE", "build_parser", "main"]
