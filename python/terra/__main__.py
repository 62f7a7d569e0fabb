"""``python -m terra``: what this installation is and where its parts are."""

import argparse
import os
import shutil
import sys

import terra


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m terra", description=__doc__)
    parser.parse_args(argv)
    import torch

    print(f"terra {terra.__version__}")
    print(f"  package:  {os.path.dirname(terra.__file__)}")
    print(f"  _C:       {terra._C.__file__}")
    print(f"  terrarun: {shutil.which('terrarun') or 'not on PATH'}")
    print(f"  python:   {sys.executable}")
    print(f"  torch:    {torch.__version__} (CUDA available: {torch.cuda.is_available()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
