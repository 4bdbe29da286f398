"""The ``medseg`` command line: one module per subcommand."""
