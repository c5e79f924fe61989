"""The subcommands of `fastast-deploy`; each module imports heavy packages only inside its commands."""
