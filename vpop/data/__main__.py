"""`python -m vpop.data NAME`: print the path of a shipped data file (for shell use)."""

import sys

from vpop.data import data_path

if __name__ == "__main__":
    path = data_path(sys.argv[1] if len(sys.argv) > 1 else "published_cohorts.csv")
    if not path.is_file():
        sys.exit(f"vpop.data: {path.name}: no such shipped file")
    print(path)
