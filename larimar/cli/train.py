"""``larimar train``: Larimar on Ray Train + DeepSpeed ZeRO-2 (paper §4: WikiText chunks, episodes of E).

    larimar train --config tiny [key=value ...]                     # a bundled recipe, embedded local Ray
    python jobs/train.py --config tiny [key=value ...]              # the same
    ray job submit --working-dir . -- python jobs/train.py --config tiny

--config takes a bundled recipe's name (``larimar recipes`` lists them) or a YAML file.

Against a ``ray start --head`` cluster: Ray 2.60 enables token authentication for local clusters, so
a plain ``ray job submit`` fails with "Missing authentication token". Either use token mode
(RAY_AUTH_MODE=token on the client, the token in ~/.ray/auth_token) or set RAY_AUTH_MODE=disabled
for both ``ray start`` and ``ray job submit`` (what tests/test_train.py does). Outside the repo
checkout (a job's working directory has no ../shared) pass the data directory, e.g.
``--runtime-env-json '{"env_vars": {"LARIMAR_DATA_DIR": "/path/to/shared/data"}}'``.

With RAY_ADDRESS set (as inside ``ray job submit``; RAY_ADDRESS=auto for a ``ray start`` cluster on
this machine) it joins that cluster, else it starts a local one. Rerunning with the same run.name
and run.storage_path resumes from the latest checkpoint; a failed worker group restarts from it up
to run.max_failures times. The trained model is written to ``<run.storage_path>/<run.name>/model``
(LarimarModel.from_pretrained loads it). A bad config exits with status 2 and a message naming the
key, before Ray starts. Logic: larimar.train.distributed.
"""

from __future__ import annotations

import argparse

from larimar.cli import config_error
from larimar.config import ConfigError


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a bundled recipe (tiny, larimar-smol-v2, ...) or a YAML file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.steps=20 run.name=try2")
    args = parser.parse_args(argv)
    from larimar.train.config import load_train_config
    from larimar.train.data import prepare_chunks
    from larimar.train.distributed import fit, resolve_paths, run_dir

    try:
        cfg = resolve_paths(load_train_config(args.config, args.overrides))
        chunks = prepare_chunks(cfg)
    except ConfigError as err:
        config_error(err)
    print(
        f"[larimar] {len(chunks)} chunks of <= {cfg.chunk_tokens} tokens from {cfg.data.source}; "
        f"{cfg.scaling.num_workers} workers x {cfg.optim.micro_batch_episodes} episodes x "
        f"{cfg.data.episode_size} chunks x {cfg.optim.grad_accumulation} accumulation, {cfg.optim.steps} steps; "
        f"run {run_dir(cfg)}",
        flush=True,
    )
    summary = fit(cfg, chunks)
    m = summary["metrics"]
    print(
        f"[larimar] done in {summary['seconds']:.0f}s: step {m.get('step')}, loss {m.get('loss', float('nan')):.4f}, "
        f"{m.get('steady_tokens_per_second', 0):,.0f} tokens/s; checkpoint {summary['checkpoint']}",
        flush=True,
    )
    print(f"[larimar] trained model: {summary['model']}  (LarimarModel.from_pretrained)", flush=True)
    return summary
