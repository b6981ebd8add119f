"""Test fixtures: the tiny models' expectations (`zoo.py`) and a hand-written DiT (`manual_dit.py`)."""
