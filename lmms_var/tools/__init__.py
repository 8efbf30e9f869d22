"""The `lmms-var` command's subcommands, one module each (see `cli.TOOL_MODULES`)."""
