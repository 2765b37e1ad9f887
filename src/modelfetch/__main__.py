"""`python -m modelfetch`: the command-line interface."""

from .cli import main

main()
