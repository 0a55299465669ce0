"""`python -m load` is `python -m load.bench`."""

from load.bench import main

if __name__ == "__main__":
    main()
