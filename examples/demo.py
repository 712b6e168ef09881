"""The main job (see README): `python examples/demo.py` equals `pyzero info` + `pyzero demo`."""

import sys

from pyzero.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
