"""Entry point: ``python -m cvvae.train`` (see ``cvvae.training.cli``)."""

from cvvae.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
