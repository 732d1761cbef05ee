"""`python -m bninspect` runs the command-line tool."""

from bninspect.cli import main

if __name__ == "__main__":
    main()
