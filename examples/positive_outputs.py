"""Non-negative network outputs by indexed slack constraints, against a quadratic penalty.

The problem, the data and both training loops are in ``lagrange_opt/demo.py`` (so that
``python -m lagrange_opt.demo`` runs the same code); this script runs them with its own
settings. Try ``python examples/positive_outputs.py --epochs 50 --alpha 100``.
"""

from lagrange_opt.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
