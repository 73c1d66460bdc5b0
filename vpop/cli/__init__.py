"""The `vpop` command line (`vpop.cli.main`), one module per sub-command."""

from vpop.cli.main import main as main
