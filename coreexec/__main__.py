"""`python -m coreexec` is the `coreexec` command."""

from coreexec.cli import main

if __name__ == "__main__":
    main()
