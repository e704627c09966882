"""Credit Bridge: credit as the gradient of a learned scalar value V_phi."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ..seeds import generator
from .base import check_range, error_signal, gaussian_matrices, load_tensors, register_method, state_shapes
from .bridges import BridgeRule
from .dfa import direct_feedback


@register_method("credit_bridge")
class CreditBridge(BridgeRule):
    """a_l = grad_h V_phi(h_l, t_l, s) / B at every layer l = 0..L.

    V_phi (a :class:`BridgeNet` with a scalar output) is trained at ``lr_fb`` on:

    * bridge consistency, l < L: V(h_l) ~ softmin_lam over K noisy successors of the
      EMA target, V_bar(h_{l+1} + eps_k), eps_k ~ N(0, sigma^2 I), where
      softmin_lam(v) = -lam log(mean_k exp(-v_k / lam));
    * a terminal value anchor: V(h_L) ~ the sample's cross-entropy;
    * terminal gradient matching: ``term_grad_weight`` * ||grad_h V(h_L) - d l_i / d h_L||^2.

    s is e_T (``cond="eT"``) or the per-sample terminal gradient (``cond="deltaL"``).
    The EMA target moves by ``ema`` after each optimiser step. Defaults follow the
    reference CIFAR run (K 4, sigma 0.05, lam 0.1, ema 0.995, weight 1.0).

    Warm-up: for the first ``warmup`` fraction of the run's steps (default 0.2, the
    paper's best CIFAR configuration) DFA drives the blocks and the embedding,
    a_l = e_T B_l / B with fixed B_l ~ N(0, 1) from the ``"feedback"`` stream, while V
    already trains; then V's credit takes over. The trainer tells the rule the run's
    length (:meth:`start_training`); :meth:`credit`, and so Gamma, reads the credit the
    blocks receive at that point of the run. ``warmup=0`` is the bridge from the
    first step.
    """

    relative_cost = 3.5

    needs_top_grad = True

    def __init__(self, model, *, K: int = 4, sigma: float = 0.05, lam: float = 0.1, ema: float = 0.995,
                 term_grad_weight: float = 1.0, hidden: int = 256, layers: int = 3, cond: str = "eT",
                 warmup: float = 0.2, **common) -> None:
        super().__init__(model, **common)
        check_range("K", K, isinstance(K, int) and K >= 1, "an integer >= 1 (noisy successors)")
        check_range("sigma", sigma, sigma >= 0, ">= 0 (successor noise std)")
        check_range("lam", lam, lam > 0, "> 0 (soft-min temperature)")
        check_range("ema", ema, 0 <= ema < 1, "in [0, 1) (EMA momentum of the target)")
        check_range("term_grad_weight", term_grad_weight, term_grad_weight >= 0, ">= 0")
        check_range("cond", cond, cond in ("eT", "deltaL"), "'eT' or 'deltaL'")
        check_range("warmup", warmup, 0 <= warmup < 1, "in [0, 1) (the fraction of the run in which DFA drives "
                                                       "the blocks)")
        self.K, self.sigma, self.lam, self.ema = K, float(sigma), float(lam), float(ema)
        self.term_grad_weight, self.cond = float(term_grad_weight), cond
        self.shapes = state_shapes(model)
        cond_dim = model.out_head.out_features if cond == "eT" else math.prod(self.shapes[-1])
        self._setup_bridge(in_dims=[math.prod(s) for s in self.shapes], out_dim=1, cond_dim=cond_dim,
                           hidden=hidden, layers=layers)
        self.target = None
        if self.init_aux:
            self.net = self._new_net()
            self.target = self._frozen_copy(self.net)
        self.generator = generator(self.seed, "bridge-noise", self._device)
        self._losses = None
        self.warmup = float(warmup)
        self.warmup_steps: int | None = None      # set by start_training
        self.steps_done = 0
        self.num_classes = model.out_head.out_features
        self.feedback = None
        if self.init_aux and self.warmup > 0:
            self.feedback = [B.to(self._dtype) for B in gaussian_matrices(
                self._feedback_shapes(), 1.0, self._device, generator(self.seed, "feedback"))]

    def _feedback_shapes(self):
        return [(self.num_classes, math.prod(s)) for s in self.shapes]

    def start_training(self, total_steps: int) -> None:
        """DFA drives the blocks for the first ``round(warmup * total_steps)`` steps from now."""
        self.warmup_steps = round(self.warmup * total_steps)
        self.steps_done = 0

    @property
    def warming_up(self) -> bool:
        """Whether DFA's credit drives the blocks now (before the first step of a schedule too)."""
        return self.warmup > 0 and (self.warmup_steps is None or self.steps_done < self.warmup_steps)

    @staticmethod
    def _frozen_copy(net):
        t = copy.deepcopy(net)
        for q in t.parameters():
            q.requires_grad_(False)
        return t

    def after_step(self):
        self.steps_done += 1
        if self.net is None:
            return
        with torch.no_grad():
            for pt, p in zip(self.target.parameters(), self.net.parameters()):
                pt.lerp_(p, 1.0 - self.ema)

    def _s(self, logits, y, top_grad):
        if self.cond == "eT":
            return error_signal(logits, y)
        return (top_grad * len(y)).flatten(1).detach()

    def local_credit(self, states, logits, y, top_grad):
        net = self._need("net", "value network V_phi")
        L, B = self.model.depth, len(y)
        s = self._s(logits, y, top_grad)
        times = [l / L for l in range(L + 1)]
        train = self.model.training       # credit() for a diagnostic does not train V
        with torch.enable_grad():
            hs = [h.detach().requires_grad_() for h in states]
            # layers 0..L-1 and the terminal layer in two passes: only the terminal gradient
            # is matched, so only its graph is kept for a second derivative
            values = net(hs[:L], list(range(L)), times[:L], s)
            grads = list(torch.autograd.grad(sum(v.sum() for v in values), hs[:L], retain_graph=train))
            v_L = net(hs[L:], [L], times[L:], s)[0]
            grads.append(torch.autograd.grad(v_L.sum(), hs[L], create_graph=train)[0])
        credit = [g.detach() / B for g in grads]
        if self.warming_up:
            if train and self.warmup_steps is None:
                raise ValueError("credit_bridge with warmup > 0 needs the run's length: train it with faeval.fit "
                                 "or fit_many, or call rule.start_training(total_steps) before the first step in "
                                 "a loop of your own (or build it with warmup=0)")
            credit = direct_feedback(self._need("feedback", "warm-up feedback matrices B_l"), self.shapes, logits, y)
        if not train:
            return credit
        # losses of V (backpropagated into V's parameters by aux_loss)
        with torch.no_grad():
            succ = states[1:]
            # when the states share a shape, one noise draw per successor k serves every layer (each
            # layer's target still averages over K independent draws); else each layer draws its own
            shared = len({h.shape for h in succ}) == 1
            eps = [self._noise(succ[0])] * L if shared else [self._noise(h) for h in succ]
            noisy = [h + e[k] for k in range(self.K) for h, e in zip(succ, eps)]     # all K x L in one pass
            vk = torch.cat(self.target(noisy, list(range(1, L + 1)) * self.K, times[1:] * self.K, s)).view(self.K, -1)
            target = -self.lam * (torch.logsumexp(-vk / self.lam, dim=0) - math.log(self.K))
            per_sample = F.cross_entropy(logits, y, reduction="none")
            g_true = top_grad * B
        self._losses = {
            "consistency": (torch.cat(values) - target).pow(2).mean(),
            "terminal_value": (v_L.squeeze(1) - per_sample).pow(2).mean(),
            "terminal_grad": self.term_grad_weight * (grads[L] - g_true).flatten(1).pow(2).sum(1).mean(),
        }
        return credit

    def _noise(self, h):
        return self.sigma * torch.randn((self.K, *h.shape), generator=self.generator, device=h.device, dtype=h.dtype)

    def aux_loss(self):
        losses, self._losses = self._losses, None
        return losses or {}

    def aux_state(self):
        net = self._need("net", "value network V_phi")
        out = {"net": self._cpu_state(net), "target": self._cpu_state(self.target),
               "schedule": {"steps_done": self.steps_done, "warmup_steps": self.warmup_steps}}
        if self.warmup > 0:
            out["feedback"] = [B.detach().cpu() for B in self._need("feedback", "warm-up feedback matrices B_l")]
        return out

    def load_aux_state(self, state):
        self.net = self._load_net(state, "net", "value network V_phi")
        self.target = self._frozen_copy(self._load_net(state, "target", "EMA target of V_phi"))
        sched = state.get("schedule") or {}
        self.steps_done, self.warmup_steps = sched.get("steps_done", 0), sched.get("warmup_steps")
        if self.warmup > 0:
            self.feedback = load_tensors(self, state, "feedback", self._feedback_shapes(),
                                         "warm-up feedback matrices B_l")
