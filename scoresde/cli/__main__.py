"""``python -m scoresde.cli`` (and ``torchrun -m scoresde.cli``): the ``scoresde`` command."""
import sys

from .main import main

sys.exit(main())
