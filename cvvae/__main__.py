"""`python -m cvvae ...`: see ``cvvae.cli``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
