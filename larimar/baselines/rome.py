"""ROME: Rank-One Model Editing (Meng, Bau, Andonian, Belinkov, NeurIPS 2022, arXiv 2202.05262).

The MLP output projection of one mid layer is treated as a linear key-value store, W k = v,
where k is the projection's input at the subject's last token (for Llama-family decoders such
as SmolLM2: the input of ``down_proj``, the gated activation) and v its output. An edit:

1. key k* (ROME ``compute_u``): the mean of k over the prompt prefixed with a few short texts
   sampled from the model itself (ROME's context templates);
   left vector u = C^-1 k* / |C^-1 k*|, with C = E[k k^T] estimated once on WikiText and cached
   (`larimar.baselines.layer_stats`).
2. value v* (ROME ``compute_v``, Eq. 4 of the paper): a vector delta added to the layer's
   output at the subject's last token is optimised with Adam so that the model predicts the
   new target after every templated prompt, plus a KL term that keeps the model's next-token
   distribution on "{subject} is a" (the subject's "essence") close to the unedited one and a
   small weight decay on delta; delta is kept within an L2 ball of ``clamp_norm_factor`` times
   |v|. v* = v + delta.
3. rank-one update (Eq. 2): W <- W + Lambda u^T with Lambda = (v* - W k) / (k . u), k the plain
   prompt's key, so that W k = v* exactly while keys orthogonal to C^-1 k* are untouched.

Hyperparameters follow ROME's GPT-2 XL / EasyEdit's Llama settings (20 v-steps at lr 0.5, KL
factor 0.0625, clamp 4, weight decay 1e-3), with fewer context templates by default (5 of 5
tokens plus the bare prompt instead of ROME's 20 of 5 and 10 tokens) so that an edit takes seconds
on a CPU; ``context_templates`` restores ROME's [[5, 10], [10, 10]]. Only the logits at the
positions the losses read are computed (the same optimisation, less vocabulary projection).
The default layer is the one at 17% depth (EasyEdit: Llama-2-7B and Llama-3.2-1B edit layer 5;
SmolLM2-135M has 30 layers, so layer 5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from larimar.baselines.base import EditRequest, LMEditor, WeightSnapshot, layer_count, mlp_out, subject_last_index
from larimar.baselines.layer_stats import LayerStats, second_moment

TEMPLATE_PREFIXES = ("The", "Therefore", "Because", "I", "You")


@dataclass
class ROMEConfig:
    layer: int = -1  # -1: the layer at 17% depth
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 5e-2  # ROME stops optimising v* below this loss
    context_templates: list[list[int]] = field(default_factory=lambda: [[5, 5]])  # [tokens, count] pairs
    stats_source: str = "../shared/data/wikitext-2-raw/wiki.valid.raw"
    stats_tokens: int = 100_000
    stats_seq_len: int = 128
    stats_cache: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.v_steps < 1 or self.stats_tokens < 1:
            raise ValueError("rome: v_steps and stats_tokens must be >= 1")
        for pair in self.context_templates:
            if len(pair) != 2 or min(pair) < 1:
                raise ValueError(f"rome: context_templates entries are [tokens, count] >= 1, got {pair}")


def default_layer(n_layers: int, fraction: float) -> int:
    return min(n_layers - 1, max(0, round(fraction * n_layers)))


class ROMEEditor(LMEditor):
    name = "rome"

    def __init__(self, lm, tokenizer, bos_id=None, cfg: ROMEConfig | None = None):
        super().__init__(lm, tokenizer, bos_id)
        self.cfg = cfg or ROMEConfig()
        self.layer = self.cfg.layer if self.cfg.layer >= 0 else default_layer(layer_count(lm), 0.17)
        self.module, self.transposed = mlp_out(lm, self.layer)
        self.snapshot = WeightSnapshot({"weight": self.module.weight})
        self.templates: list[str] | None = None
        self.stats: LayerStats | None = None
        self.inv_moment: torch.Tensor | None = None

    # -- one-time work ----------------------------------------------------------------------------

    def prepare(self) -> dict[str, float]:
        costs = {}
        if self.templates is None:
            t0 = time.perf_counter()
            self.templates = self._context_templates()
            costs["context_templates"] = time.perf_counter() - t0
        if self.inv_moment is None:
            t0 = time.perf_counter()
            c = self.cfg
            self.stats = second_moment(
                self.lm,
                self.tok,
                self.layer,
                c.stats_source,
                c.stats_tokens,
                self.bos_id,
                c.stats_seq_len,
                cache=c.stats_cache,
            )
            self.inv_moment = torch.linalg.inv(self.stats.moment).float().to(self.device)
            costs["layer_stats"] = self.stats.seconds if not self.stats.cached else 0.0
            costs["layer_stats_load_and_invert"] = time.perf_counter() - t0 - costs["layer_stats"]
        return costs

    @torch.no_grad()
    def _context_templates(self) -> list[str]:
        """ROME's templates: "{}" plus short texts the model samples from a few prefixes, each + ". {}"."""
        gen = torch.Generator().manual_seed(self.cfg.seed)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        torch.manual_seed(seed)
        out = ["{}"]
        for length, count in self.cfg.context_templates:
            per = max(1, count // len(TEMPLATE_PREFIXES))
            for prefix in TEMPLATE_PREFIXES:
                ids = torch.tensor(
                    [[self.bos_id, *self.tok(prefix, add_special_tokens=False)["input_ids"]]], device=self.device
                )
                for _ in range(per):
                    new = self.lm.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=True,
                        top_k=5,
                        max_new_tokens=length,
                        min_new_tokens=length,
                        pad_token_id=self.pad_id,
                    )[0, ids.shape[1] :]
                    text = (prefix + self.tok.decode(new, skip_special_tokens=True)).replace("{", "").replace("}", "")
                    out.append(" ".join(text.split()) + ". {}")
        return out

    # -- the edit ---------------------------------------------------------------------------------

    def _fill(self, template: str, prompt: str) -> str:
        return template.replace("{}", prompt)

    def _key_index(self, text: str, subject: str) -> int:
        """Position (in the BOS-prefixed sequence) of the subject's last token in `text`."""
        return 1 + subject_last_index(self.tok, text, subject)

    def _keys_at(self, texts: list[str], subject: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Input and output of the edited projection at each text's subject-last token -> (n, d_in), (n, d_out)."""
        enc = self.encode(texts, [""] * len(texts))
        idx = torch.tensor([self._key_index(t, subject) for t in texts], device=self.device)
        got = {}

        def hook(_m, args, out):
            got["k"], got["v"] = args[0], out

        h = self.module.register_forward_hook(hook)
        try:
            self.lm(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        finally:
            h.remove()
        rows = torch.arange(len(texts), device=self.device)
        return got["k"][rows, idx].detach(), got["v"][rows, idx].detach()

    def edit(self, request: EditRequest) -> None:
        if self.templates is None or self.inv_moment is None:
            self.prepare()
        subject = request.subject if request.subject and request.subject in request.prompt else ""
        with torch.no_grad():
            keys, _ = self._keys_at([self._fill(t, request.prompt) for t in self.templates], subject)
            u = self.inv_moment @ keys.mean(0)
            u = u / u.norm()
            k, v = self._keys_at([request.prompt], subject)
            k, v = k[0], v[0]
        v_star = v + self._optimise_delta(request, subject)
        with torch.no_grad():
            right = (v_star - v) / torch.dot(k, u)
            upd = torch.outer(u, right) if self.transposed else torch.outer(right, u)
            self.module.weight += upd.to(self.module.weight.dtype)
        self.edits += 1

    def _optimise_delta(self, request: EditRequest, subject: str) -> torch.Tensor:
        c = self.cfg
        rewrite = [self._fill(t, request.prompt) for t in self.templates]
        kl_subject = subject or request.prompt
        kl_prompt = f"{kl_subject} is a"
        enc = self.encode(rewrite + [kl_prompt], [request.target_new] * len(rewrite) + [""])
        lookup = [self._key_index(t, subject) for t in rewrite] + [self._key_index(kl_prompt, kl_subject)]
        n_rw, B, T = len(rewrite), len(lookup), enc.input_ids.shape[1]
        at = torch.zeros(B, T, 1, device=self.device)
        at[torch.arange(B), torch.tensor(lookup)] = 1.0
        # positions whose logits a loss reads: each rewriting row's target tokens, the KL row's lookup
        read_rows, read_pos = [], []
        for i, (start, c_ids) in enumerate(enc.spans[:n_rw]):
            read_rows += [i] * len(c_ids)
            read_pos += list(range(start - 1, start - 1 + len(c_ids)))
        read_rows.append(B - 1)
        read_pos.append(lookup[-1])
        read_rows_t, read_pos_t = torch.tensor(read_rows), torch.tensor(read_pos)
        targets = torch.tensor([t for _, c_ids in enc.spans[:n_rw] for t in c_ids], device=self.device)
        row_of = torch.tensor(read_rows[:-1], device=self.device)
        tokens_per_row = torch.tensor(
            [len(c_ids) for _, c_ids in enc.spans[:n_rw]], device=self.device, dtype=torch.float
        )

        d_out = self.module.weight.shape[1] if self.transposed else self.module.weight.shape[0]
        delta = torch.zeros(d_out, device=self.device, requires_grad=True)
        state = {"init": None}

        def add_delta(_m, _args, out):
            if state["init"] is None:
                state["init"] = out[0, lookup[0]].detach().clone()
            return out + at.to(out.dtype) * delta.to(out.dtype)

        opt = torch.optim.Adam([delta], lr=c.v_lr)
        head = self.lm.get_output_embeddings()
        kl_init = None
        handle = self.module.register_forward_hook(add_delta)
        try:
            for it in range(c.v_steps):
                opt.zero_grad()
                hidden = self.lm.base_model(
                    input_ids=enc.input_ids, attention_mask=enc.attention_mask
                ).last_hidden_state
                logp = F.log_softmax(head(hidden[read_rows_t, read_pos_t]).float(), -1)
                kl_logp = logp[-1:]
                if kl_init is None:
                    kl_init = kl_logp.detach().clone()
                tok_lp = logp[:-1][torch.arange(len(targets)), targets]
                nll_rows = -torch.zeros(n_rw, device=self.device).index_add(0, row_of, tok_lp) / tokens_per_row
                nll = nll_rows.mean()
                kl = c.kl_factor * F.kl_div(kl_init, kl_logp, log_target=True, reduction="batchmean")
                wd = c.v_weight_decay * (delta.norm() / state["init"].norm() ** 2)
                loss = nll + kl + wd
                if loss.item() < c.early_stop_loss or it == c.v_steps - 1:
                    break
                loss.backward()
                opt.step()
                max_norm = c.clamp_norm_factor * state["init"].norm()
                if delta.norm() > max_norm:
                    with torch.no_grad():
                        delta.mul_(max_norm / delta.norm())
        finally:
            handle.remove()
        return delta.detach()

    def reset(self) -> None:
        self.snapshot.restore()
        self.edits = 0
