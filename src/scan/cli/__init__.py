"""Command line: one module per `scan` subcommand, each with `main(argv=None)`."""
