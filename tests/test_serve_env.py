"""Ray Serve's high-throughput switches (larimar/serving/serve_env.py): set unless already set."""

from larimar.serving.serve_env import HIGH_THROUGHPUT, apply


def test_apply_sets_the_switches_and_keeps_what_the_environment_already_says():
    env = {"PATH": "/bin"}
    assert apply(env) == HIGH_THROUGHPUT == {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    assert env["PATH"] == "/bin" and {k: env[k] for k in HIGH_THROUGHPUT} == HIGH_THROUGHPUT
    off = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    assert apply(off) == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def test_larimar_serve_applies_them_only_when_asked():
    from larimar.cli.serve import build_parser

    assert build_parser().parse_args([]).high_throughput is False
    assert build_parser().parse_args(["--high-throughput"]).high_throughput is True
