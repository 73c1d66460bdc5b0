from vpop.cli.main import entry

entry()
