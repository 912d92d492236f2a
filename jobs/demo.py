"""``larimar demo``, as a script: ``python jobs/demo.py --help`` (logic and options: larimar/cli/demo.py).

Kept so that ``ray job submit --working-dir . -- python jobs/demo.py ...`` runs without the package's
console script on the cluster's PATH.
"""

from larimar.cli.demo import main

if __name__ == "__main__":
    main(prog="jobs/demo.py")
