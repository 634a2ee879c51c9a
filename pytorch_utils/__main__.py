"""``python -m pytorch_utils`` entry point."""
from pytorch_utils.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
