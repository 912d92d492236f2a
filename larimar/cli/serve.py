"""``larimar serve``: start the Ray Serve application (larimar.serving.app) and keep it running.

    larimar serve                                          # the bundled larimar-smol-v3, runs/serve-store
    larimar serve --config serve/settings.dev.yaml         # ServeSettings from a YAML file
    larimar serve model=/models/v2 storage=s3://bucket/store limits.max_new_tokens=64 --port 8000

``key=value`` sets any ServeSettings field (larimar/serving/schemas.py) over the file; a bad key
or value exits with status 2 naming it, before Ray starts. With RAY_ADDRESS set it joins that
cluster, else it starts a local Ray. The same application is what ``serve run
larimar.serving.app:build`` and ``serve deploy serve/config.yaml`` start. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import sys

from larimar.cli import config_error
from larimar.config import ConfigError


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="ServeSettings YAML (e.g. serve/settings.dev.yaml); default: the field defaults")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default="larimar", help="Serve application name")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray it starts (default: all)")
    p.add_argument(
        "--high-throughput",
        action="store_true",
        help="start the local Ray in Ray Serve's high-throughput mode (HAProxy, direct ingress, gRPC between "
        "replicas; larimar/serving/serve_env.py)",
    )
    p.add_argument("overrides", nargs="*", help="key=value ServeSettings fields, e.g. model=larimar-smol-v3")
    return p


def main(argv: list[str] | None = None, prog: str | None = None):
    args = build_parser(prog).parse_args(argv)
    from larimar.model import DEFAULT_MODEL, LarimarModel
    from larimar.serving.schemas import load_settings

    try:
        settings = load_settings({"config": args.config, "overrides": args.overrides}, {"model": DEFAULT_MODEL})
        try:
            LarimarModel.read_config(settings.model)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"model: {err}") from None
    except ConfigError as err:
        config_error(err)
    if not settings.api_keys:
        print(
            "[larimar] warning: no api_keys configured, so every request will be refused with 401; add "
            "api_keys=[{tenant: NAME, sha256: HASH}] (python -m larimar.serving.auth <key> prints HASH) or a "
            "--config file that lists them",
            file=sys.stderr,
            flush=True,
        )
    if args.high_throughput:
        from larimar.serving import serve_env

        serve_env.apply()  # for the Ray it starts; a cluster at RAY_ADDRESS keeps its own environment
    import ray
    from ray import serve

    from larimar.serving.app import build

    if not ray.is_initialized():
        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    print(
        f"[larimar] serving {settings.model} on http://{args.host}:{args.port} (storage {settings.storage}); "
        "Ctrl-C stops it",
        flush=True,
    )
    try:
        serve.run(build(settings.model_dump(mode="json")), name=args.name, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
