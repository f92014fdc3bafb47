"""Implementations of the `pyscale` subcommands (registered in pyscale.cli.COMMANDS)."""
