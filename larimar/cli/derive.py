"""``larimar derive``: a new model from a trained one, its config changed, no training.

    demo='New Fact: The Colosseum is in the city of Toronto.\nPrompt: Where is the Colosseum? It is in the city of Toronto.\n'
    larimar derive --from larimar-smol-v2 --out runs/v3 readout=value_norm value_space=latent+decoder \
        value_latent_scale=0.5 value_chat_latent_scale=1.0 "value_template=\"${demo}New Fact:{value}\\nPrompt:\""

(how larimar-smol-v3 was made: its template holds one worked demonstration before IKE's).

Some options change how a trained model reads its memory without new weights: `value_space:
decoder` keeps the trained key encoder and reads facts back in the decoder's own embedding space
(`larimar.prefix_decoder`), `value_tokens`, `value_template`. Weights the new config no longer
uses are dropped (and listed); an option that would need untrained weights is refused, so a
derived model is always fully specified by its source and the overrides, both recorded in its
``config.json`` (``derived_from``). Logic: `LarimarModel.derive`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from larimar.cli import config_error


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from", dest="source", required=True, help="a saved model directory or a bundled name")
    parser.add_argument("--out", required=True, help="directory to write the derived model to")
    parser.add_argument("overrides", nargs="*", help="key=value changes of the model config, e.g. value_space=decoder")
    args = parser.parse_args(argv)
    from larimar.model import CONFIG_NAME, LarimarModel

    try:
        model, dropped = LarimarModel.derive(args.source, args.overrides)
    except (ValueError, FileNotFoundError) as err:  # ConfigError is a ValueError
        config_error(err)
    out = Path(args.out)
    model.save_pretrained(out)
    config = json.loads((out / CONFIG_NAME).read_text())
    config["derived_from"] = {"model": str(args.source), "overrides": list(args.overrides)}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    summary = {"out": str(out), "dropped": dropped}
    print(json.dumps(summary, indent=1))
    return summary
