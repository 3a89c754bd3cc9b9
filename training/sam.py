"""Sharpness-Aware Minimisation (Foret et al., 2021) wrapping any torch optimiser (Adam / AdamW in the recipes).

One update takes two forward/backward passes: ``first_step`` climbs to the worst-case weights within radius
``rho`` of the current ones, ``second_step`` restores them and applies the base optimiser with the gradient taken
there. ``bn_update`` lets the loop freeze BatchNorm running statistics during the second pass.
"""
from __future__ import annotations

import torch


class SAM(torch.optim.Optimizer):
    """SAM / ASAM (``adaptive=True``) around ``base_optimizer`` (a class, e.g. ``torch.optim.Adam``)."""

    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, **kwargs) -> None:
        if rho < 0:
            raise ValueError(f"SAM rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = [((torch.abs(p) if g["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not norms:
            return torch.tensor(0.0)
        return torch.norm(torch.stack([n.to(norms[0].device) for n in norms]), p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to w + e(w), the ascent point; remembers w."""
        grad_norm = self._grad_norm()
        for g in self.param_groups:
            scale = g["rho"] / (grad_norm + 1e-12)
            for p in g["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.detach().clone()
                e_w = (torch.pow(p, 2) if g["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to w and take the base optimiser's step with the gradient from w + e(w)."""
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None or "old_p" not in self.state[p]:
                    continue
                p.copy_(self.state[p]["old_p"])
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):
        """Full SAM step with a closure that re-evaluates the loss (and calls backward)."""
        if closure is None:
            raise ValueError("SAM.step needs a closure; the training loop calls first_step/second_step instead")
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        closure()
        self.second_step()

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups


def bn_update(model: torch.nn.Module, enabled: bool) -> None:
    """Freeze (``enabled=False``) or restore BatchNorm running-stat updates, for SAM's second pass."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            if not enabled:
                m._sam_momentum = m.momentum
                m.momentum = 0.0
            elif hasattr(m, "_sam_momentum"):
                m.momentum = m._sam_momentum
                del m._sam_momentum
