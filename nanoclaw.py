#!/usr/bin/env python3
"""nanoclaw: a small personal AI assistant. Usage: python nanoclaw.py --help"""
import sys

from lib.cli import main

if __name__ == "__main__":
    sys.exit(main())
