"""``larimar sweep``, as a script: ``python tune/sweep.py --help`` (logic and options: larimar/cli/sweep.py).

Kept so that ``ray job submit --working-dir . -- python tune/sweep.py ...`` runs without the package's
console script on the cluster's PATH.
"""

from larimar.cli.sweep import main

if __name__ == "__main__":
    main(prog="tune/sweep.py")
