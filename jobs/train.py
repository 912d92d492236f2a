"""``larimar train``, as a script: ``python jobs/train.py --help`` (logic and options: larimar/cli/train.py).

Kept so that ``ray job submit --working-dir . -- python jobs/train.py ...`` runs without the package's
console script on the cluster's PATH.
"""

from larimar.cli.train import main

if __name__ == "__main__":
    main(prog="jobs/train.py")
