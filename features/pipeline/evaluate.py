"""How good is a dictionary on held-out text?

- fvu: fraction of variance unexplained, Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over all tokens
- l0: mean number of features active per token
- dead_fraction: features that never fire on the held-out set

FVU, L0 and dead fraction need only the residuals (the model up to layer L), so they cover up to
`max_tokens`; CE-loss recovered runs the whole model three times and covers the first `ce_tokens`.
- ce_loss_recovered: (CE_zero − CE_spliced) / (CE_zero − CE_clean), where CE_spliced is the LM
  loss with the reconstruction spliced in at layer L and CE_zero with zeros there (at the same,
  non-special positions). 1 = as good as the model itself, 0 = as bad as deleting the layer.
"""
from __future__ import annotations

import itertools
from typing import Iterable, NamedTuple

import torch
from torch import Tensor

from chat.steer.hooks import on_output
from chat.runtime.models import LoadedModel
from features.dictionary import Dictionary
from features.pipeline.harvest import residuals


class EvalResult(NamedTuple):
    fvu: float
    l0: float
    dead_fraction: float
    ce_loss_recovered: float
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    tokens: int  # tokens behind fvu, l0 and dead_fraction
    ce_tokens: int  # tokens behind the CE losses

    def summary(self) -> dict:
        return {"fvu": self.fvu, "l0": self.l0, "dead_fraction": self.dead_fraction,
                "ce_loss_recovered": self.ce_loss_recovered, "tokens": self.tokens, "ce_tokens": self.ce_tokens}


def _lm_loss(lm: LoadedModel, ids: Tensor, layer: int, edit=None) -> Tensor:
    """Summed next-token CE over positions 1.. of ids (B, T), with `edit(h) -> h` at `layer`."""
    ids = ids.to(lm.device)
    with torch.inference_mode(), on_output(lm.layers[layer], edit or (lambda h: None)):
        logits = lm.model(input_ids=ids, use_cache=False).logits.float()  # (B, T, V)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
    )


def evaluate(lm: LoadedModel, dictionary: Dictionary, layer: int, sequences: Iterable[list[int]],
             *, max_tokens: int = 100_000, ce_tokens: int = 50_000, batch_size: int = 8) -> EvalResult:
    d = dictionary
    err_ss = torch.zeros((), dtype=torch.float64)
    sum_x = torch.zeros(d.d_in, dtype=torch.float64)
    sum_sq = torch.zeros((), dtype=torch.float64)
    l0_sum, tokens, ce_count, ce_positions = 0.0, 0, 0, 0
    fired = torch.zeros(d.d_sae, dtype=torch.bool)
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    stream = iter(sequences)
    while tokens < max_tokens:
        batch = list(itertools.islice(stream, batch_size))
        if not batch:
            break
        ids = torch.tensor(batch)  # (B, T)
        keep = lm.content_mask(ids)  # (B, T)

        def record(h: Tensor) -> Tensor:
            """Reconstruction stats of h (B, T, d) at kept positions; returns x_hat (B, T, d)."""
            nonlocal err_ss, sum_sq, l0_sum
            enc = d.encode(h)
            x_hat = d.decode(enc.acts)  # (B, T, d)
            m = keep.to(h.device)
            x = h.float()[m]  # (N, d)
            err_ss += (x - x_hat[m]).double().pow(2).sum().cpu()
            sum_x.add_(x.double().sum(0).cpu())
            sum_sq += x.double().pow(2).sum().cpu()
            active = enc.acts[m] > 0  # (N, d_sae)
            l0_sum += float(active.sum())
            fired.logical_or_(active.any(0).cpu())
            return x_hat

        def splice(h: Tensor, zero: bool = False) -> Tensor:
            mask = keep.to(h.device).unsqueeze(-1)  # (B, T, 1)
            if zero:
                return torch.where(mask, torch.zeros_like(h), h)
            return torch.where(mask, record(h).to(h.dtype), h)

        if ce_count < ce_tokens:
            ce["clean"] += float(_lm_loss(lm, ids, layer))
            ce["spliced"] += float(_lm_loss(lm, ids, layer, splice))
            ce["zero"] += float(_lm_loss(lm, ids, layer, lambda h: splice(h, zero=True)))
            ce_count += int(keep.sum())
            ce_positions += ids.shape[0] * (ids.shape[1] - 1)
        else:
            record(residuals(lm, layer, ids))
        tokens += int(keep.sum())
    if tokens == 0:
        raise ValueError("no tokens to evaluate on: the text (or its held-out part) is shorter than one sequence")
    total_ss = sum_sq - sum_x.pow(2).sum() / tokens  # Σ‖x − mean‖²
    clean, spliced, zero = (ce[k] / max(ce_positions, 1) for k in ("clean", "spliced", "zero"))
    return EvalResult(
        fvu=float(err_ss / total_ss),
        l0=l0_sum / tokens,
        dead_fraction=float(1 - fired.float().mean()),
        ce_loss_recovered=(zero - spliced) / (zero - clean) if ce_positions else float("nan"),
        ce_clean=clean, ce_spliced=spliced, ce_zero=zero, tokens=tokens, ce_tokens=ce_count,
    )
