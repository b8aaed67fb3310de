"""``python -m pipeline``: the command line, so that ``torchrun ... -m pipeline run all`` starts it in each worker."""
from .cli import main

if __name__ == "__main__":
    main()
