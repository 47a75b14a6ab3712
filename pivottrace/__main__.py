"""`python -m pivottrace`: the same command line as the `pivottrace` script (see cli.py)."""

from .cli import app

if __name__ == "__main__":
    app(prog_name="pivottrace")
