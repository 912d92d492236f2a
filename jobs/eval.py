"""``larimar eval``, as a script: ``python jobs/eval.py --help`` (logic and options: larimar/cli/eval.py).

Kept so that ``ray job submit --working-dir . -- python jobs/eval.py ...`` runs without the package's
console script on the cluster's PATH.
"""

from larimar.cli.eval import main

if __name__ == "__main__":
    main(prog="jobs/eval.py")
