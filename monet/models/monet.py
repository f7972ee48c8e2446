"""Multi-Order Network (MONET §3.2–3.4), and the sequential baselines built from the same parts.

One class covers three families:

* ``monet``: T task-specific GRU cells, M distinct random orders, learned order logits u with
  order dropout (k of the M orders per example, eq. 25) and L-trajectory inference (Alg. 2).
* ``oracle``: MONET with M = 1 and a given order (the identity by default).
* ``mrnn`` (§3.1.2): one shared GRU cell, one fixed random order drawn from the seed.

Mixed task specs (Aff-Wild2). The ordered chain runs over the binary tasks only (the 12 AUs);
every other task (expression: multiclass, valence/arousal: regression) gets its own head
(dense -> ReLU -> dense) on the shared encoder state ``h0``. Those outputs do not depend on the
order, so in the mixture NLL of eq. 18 their NLL is the same for every kept order and comes out
of the log-sum-exp: ``loss = NLL_heads + (-logsumexp_k [log pi~_k + ... chain NLL of order k])``.
Per-group loss weights and learned (uncertainty) weights scale each task's NLL before the
mixture (``MultiTaskModel.group_scale``).

Missing labels. A label with mask 0 is fed back to the next cell as 0 (neither positive nor
negative: the signed label ``(2y - 1)`` times the mask); without a mask, a non-finite label
counts as missing. Its loss term is masked by ``monet.losses.task_nll``.

Vectorisation. Under teacher forcing the hidden state after step t only depends on the input and
on the first t tasks of the order (their ground-truth labels are fixed), so every *distinct
prefix* of the kept orders is computed once per example. The prefixes of the M orders form a
trie built at construction; at step t the rows are the (example, trie node) pairs used by at
least one kept order of that example, laid out in padded blocks by the task of the node, and the
task cells of the step run together as one batched matmul over stacked weights. Only the cells
a step uses get a block: with few orders most rows of a step share one task, and T blocks as
long as the longest would be mostly padding (M = 2, T = 5: inference 4x faster). The row layout
of a batch (which slot continues which slot of the step before, where each logit lands) is index
arithmetic on a few thousand integers, done in numpy before the forward (``plan_rows``); the
hidden states stay in the padded layout from step to step, so a step costs one gather, two
``bmm`` and the GRU update. There is no Python loop over orders, examples or cells, only over the
T steps. ``tests/monet/test_models.py`` checks loss and
gradients against a plain per-order loop (``monet.models.monet_reference``).

Example:
    >>> import torch
    >>> from monet.tasks import TaskSpec
    >>> from monet.models.encoders import MLPEncoder
    >>> net = MultiOrderNet(MLPEncoder(2), 64, TaskSpec.binary("abc"), M=6, k=4, seed=0)
    >>> out = net(torch.zeros(8, 2), torch.ones(8, 3))
    >>> out.logits.shape, out.log_w.shape
    (torch.Size([8, 4, 3]), torch.Size([8, 4]))
"""
from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from monet.errors import ConfigError
from monet.models.base import ModelOutput, MultiTaskModel
from monet.models.encoders import encoder_from_config
from monet.registry import FAMILIES
from monet.tasks import TaskSpec

# Enumerate all permutations when T! is at most this; above it, rejection-sample distinct ones.
_ENUMERATE_LIMIT = 400_000


def random_orders(T: int, M: int, seed: int) -> torch.Tensor:
    """M distinct uniformly random permutations of range(T), seeded. ``[M, T]`` long."""
    n_perm = math.factorial(T)
    if M > n_perm:
        raise ConfigError(f"M: {M} orders requested but only T! = {n_perm} exist for T = {T}")
    if M < 1:
        raise ConfigError(f"M: expected at least 1 order, got {M}")
    rng = np.random.default_rng(seed)
    if n_perm <= _ENUMERATE_LIMIT:
        allp = np.array(list(itertools.permutations(range(T))), dtype=np.int64)
        pick = rng.choice(n_perm, size=M, replace=False)
        return torch.from_numpy(allp[pick])
    seen, out = set(), []
    while len(out) < M:
        p = tuple(rng.permutation(T).tolist())
        if p not in seen:
            seen.add(p)
            out.append(p)
    return torch.tensor(out, dtype=torch.long)


def order_matrix(order: Sequence[int]) -> torch.Tensor:
    """(M_sigma)_{i,j} = 1 iff j = sigma(i) (eq. 11): row = step, column = task."""
    T = len(order)
    m = torch.zeros(T, T)
    m[torch.arange(T), torch.as_tensor(order)] = 1.0
    return m


class _Trie:
    """Prefix trie of a set of orders, one level per step, nodes sorted by their last task."""

    def __init__(self, orders: torch.Tensor):
        M, T = orders.shape
        self.node_of, self.task, self.parent, self.prev_task, self.seen = [], [], [], [], []
        for t in range(T):
            # Key: last task first, so unique() sorts the nodes of this level by task.
            key = torch.cat([orders[:, t:t + 1], orders[:, :t]], dim=1)
            uniq, inv = torch.unique(key, dim=0, return_inverse=True)
            self.node_of.append(inv)                       # [M] node of each order at step t
            self.task.append(uniq[:, 0].contiguous())      # [P_t] task computed at this node
            rep = torch.empty(len(uniq), dtype=torch.long)
            rep[inv] = torch.arange(M)                     # a representative order per node
            seen = torch.zeros(len(uniq), T)                # tasks before step t at this node
            if t > 0:
                seen.scatter_(1, orders[rep, :t], 1.0)
            self.seen.append(seen)
            if t == 0:
                self.parent.append(torch.zeros(len(uniq), dtype=torch.long))
                self.prev_task.append(torch.full((len(uniq),), -1, dtype=torch.long))
            else:
                self.parent.append(self.node_of[t - 1][rep])
                self.prev_task.append(orders[rep, t - 1])

        # numpy copies for the row plan of each batch (``MultiOrderNet.plan_rows``): the index
        # arithmetic is on a few thousand integers, far below the cost of a torch op
        self.np = {name: [v.numpy() for v in getattr(self, name)]
                   for name in ("node_of", "task", "parent", "prev_task")}

    def to(self, device):
        # only ``seen`` is read on the model's device; the rest is read in numpy (``self.np``)
        self.seen = [v.to(device) for v in self.seen]
        return self


class MultiOrderNet(MultiTaskModel):
    """MONET / oracle / MRNN (see the module docstring).

    Args:
        encoder: shared encoder f_W, ``[B, ...] -> [B, enc_dim]``.
        enc_dim: its output width.
        spec: the tasks (all binary).
        hidden: GRU units.
        M: number of orders (ignored when ``orders`` is given).
        k: orders kept per example during training (order dropout); ``None`` keeps all M.
        orders: explicit ``[M, T]`` orders (0-based); default: M seeded random permutations.
        shared_cell: one GRU cell for all tasks (MRNN) instead of one per task (MONET).
        feedback: label feedback into the cell of step t: ``prev`` (eq. 15: (2y - 1) times the
            one-hot of the task of step t-1) or ``all`` (the signed labels of every task of steps
            1..t-1, zeros elsewhere).
        feedback_embed: width of a dense+ReLU layer on the label feedback (0: none).
        L: default number of inference trajectories.
        seed: seed of the random orders.
    """

    def __init__(self, encoder: nn.Module, enc_dim: int, spec: TaskSpec, hidden: int = 64,
                 M: int = 120, k: Optional[int] = None, orders: Optional[torch.Tensor] = None,
                 shared_cell: bool = False, feedback: str = "prev", feedback_embed: int = 0,
                 L: int = 20, seed: int = 0):
        super().__init__(spec)
        chain = spec.indices("binary")
        if not chain:
            raise ConfigError("family: sequential families (monet, mrnn, oracle) chain binary "
                              "tasks, and this dataset has none (use vmnc, vmns, mtt or mtca)")
        T = len(chain)                                          # the chain: binary tasks only
        self.register_buffer("chain", torch.tensor(chain, dtype=torch.long), persistent=False)
        self.register_buffer("chain_out", torch.tensor([spec.offsets[j] for j in chain],
                                                       dtype=torch.long), persistent=False)
        self.extra = [j for j, t in enumerate(spec.tasks) if t.kind != "binary"]
        if orders is None:
            orders = random_orders(T, int(M), seed)
        orders = torch.as_tensor(orders, dtype=torch.long)
        if orders.ndim != 2 or orders.shape[1] != T:
            raise ConfigError(f"order: expected orders over T = {T} tasks, got shape "
                              f"{tuple(orders.shape)}")
        if any(sorted(o) != list(range(T)) for o in orders.tolist()):
            raise ConfigError(f"order: every order must be a permutation of 0..{T - 1}")
        M = orders.shape[0]
        k = M if k is None else int(k)
        if k < 1:
            raise ConfigError(f"k: order dropout keeps k orders per example; expected k >= 1, got {k}")
        if k > M:
            raise ConfigError(f"k: order dropout keeps k <= M orders; got k = {k} > M = {M}")
        self.T, self.M, self.k, self.L, self.hidden = T, M, k, int(L), hidden
        self.encoder = encoder
        self.proj = nn.Identity() if enc_dim == hidden else nn.Linear(enc_dim, hidden)
        if feedback not in ("prev", "all"):
            raise ConfigError(f"feedback: expected 'prev' or 'all', got {feedback!r}")
        self.feedback_mode = feedback
        in_dim = feedback_embed if feedback_embed else T
        self.feedback = (nn.Sequential(nn.Linear(T, feedback_embed), nn.ReLU())
                         if feedback_embed else nn.Identity())
        self.shared_cell = shared_cell
        C = 1 if shared_cell else T
        # GRU cells, one per task (or one shared), stacked so that all cells of a step run as one
        # batched matmul. Gate layout and initialisation as torch.nn.GRUCell (r, z, n).
        bound = 1.0 / math.sqrt(hidden)
        self.w_ih = nn.Parameter(torch.empty(C, in_dim, 3 * hidden).uniform_(-bound, bound))
        self.w_hh = nn.Parameter(torch.empty(C, hidden, 3 * hidden).uniform_(-bound, bound))
        self.b_ih = nn.Parameter(torch.empty(C, 3 * hidden).uniform_(-bound, bound))
        self.b_hh = nn.Parameter(torch.empty(C, 3 * hidden).uniform_(-bound, bound))
        # Task-specific output layers o = <w_t, h> + b_t.
        self.head_w = nn.Parameter(torch.empty(T, hidden).uniform_(-bound, bound))
        self.head_b = nn.Parameter(torch.empty(T).uniform_(-bound, bound))
        # order-independent heads of the non-binary tasks, on the shared state h0
        self.extra_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, spec.tasks[j].out_dim))
            for j in self.extra)
        self.register_buffer("orders", orders)
        # Order logits u (eq. 18); a parameter only when there is something to select.
        self.order_logits = nn.Parameter(torch.zeros(M)) if M > 1 else None
        # Temperature tau of the order selector, pi = softmax(u / tau), in training (eq. 25) and
        # inference alike; 1 is the paper's pi. The training loop anneals it when asked
        # (TrainConfig.order_temp_final); not saved in the state dict (the loop sets it).
        self.order_temperature = 1.0
        self._trie = _Trie(orders)
        self._trie_device = torch.device("cpu")

    # ------------------------------------------------------------------ order selector
    def init_binary_bias(self, log_odds: torch.Tensor) -> None:
        """Output bias of the chain (binary) tasks <- ``log_odds`` ``[T]``, in task order."""
        with torch.no_grad():
            self.head_b.copy_(log_odds.to(self.head_b))

    def order_parameters(self) -> list:
        return [self.order_logits] if self.order_logits is not None else []

    def pi(self) -> torch.Tensor:
        """Order selector pi = softmax(u / tau) (eq. 26; tau = 1 unless annealed), ``[M]``."""
        if self.order_logits is None:
            return torch.ones(1, device=self.orders.device)
        return torch.softmax(self.order_logits.detach() / self.order_temperature, dim=0)

    def soft_order(self) -> torch.Tensor:
        """Omega = sum_m pi_m M_sigma_m (eq. 12), ``[T, T]``: row = step, column = task."""
        pi, T = self.pi(), self.T
        onehot = torch.zeros(self.M, T, T, device=pi.device)
        onehot.scatter_(2, self.orders[:, :, None], 1.0)
        return torch.einsum("m,mij->ij", pi, onehot)

    def dist_to_identity(self) -> float:
        """||Omega - I||_F^2, the distance of the soft order to the identity order."""
        om = self.soft_order()
        return float(((om - torch.eye(self.T, device=om.device)) ** 2).sum())

    def most_likely_order(self) -> list:
        return self.orders[int(torch.argmax(self.pi()))].tolist()

    def order_stats(self) -> dict:
        pi = self.pi()
        ent = float(-(pi * torch.log(pi.clamp_min(1e-12))).sum())
        return {"order/dist_to_identity": self.dist_to_identity(),
                "order/max_pi": float(pi.max()), "order/entropy": ent}

    # ------------------------------------------------------------------ building blocks
    def _trie_on(self, device):
        if self._trie_device != device:
            self._trie.to(device)
            self._trie_device = device
        return self._trie

    @staticmethod
    def _gru(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """GRU update from input gates ``gi`` and hidden gates ``gh`` ``[..., 3H]``."""
        ir, iz, in_ = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return n + z * (h - n)                                # (1 - z) * n + z * h

    def cell(self, c: int, fb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Cell ``c`` (cell 0 when shared) on rows that all use it: ``h_new [R, H]``. Used by the
        reference loop."""
        c = 0 if self.shared_cell else c
        return self._gru(fb @ self.w_ih[c] + self.b_ih[c], h @ self.w_hh[c] + self.b_hh[c], h)

    def _cells(self, fp: torch.Tensor, hp: torch.Tensor,
               task: Optional[torch.Tensor] = None,
               cells: Optional[torch.Tensor] = None) -> tuple:
        """The task cells of a step at once on padded blocks: ``fp [C, n, in]`` label feedback
        and ``hp [C, n, H]`` hidden states, block c holding the rows of cell c (of cell
        ``cells[c]`` when given: only the cells a step uses get a block). Two ``bmm`` over
        the stacked weights and one GRU update; returns ``(h_new [C, n, H], logit [C, n])``. The
        output layer is block c's (task c), or with a shared cell each row's ``task`` ``[C * n]``."""
        w_ih, b_ih, w_hh, b_hh = self.w_ih, self.b_ih, self.w_hh, self.b_hh
        head_w, head_b = self.head_w, self.head_b
        if cells is not None:
            w_ih, b_ih, w_hh, b_hh = w_ih[cells], b_ih[cells], w_hh[cells], b_hh[cells]
            if task is None:
                head_w, head_b = head_w[cells], head_b[cells]
        gi = torch.baddbmm(b_ih[:, None, :], fp, w_ih)                            # [C, n, 3H]
        gh = torch.baddbmm(b_hh[:, None, :], hp, w_hh)
        hn = self._gru(gi, gh, hp)                                                # [C, n, H]
        if task is not None:
            flat = hn.reshape(-1, hn.shape[-1])
            return hn, self._head(flat, task).view(hn.shape[:2])
        return hn, (hn * head_w[:, None, :]).sum(-1) + head_b[:, None]

    def _head(self, h: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Output logit ``<w_t, h> + b_t`` of each row ``h [R, H]`` with its task's layer."""
        return (h * self.head_w[task]).sum(-1) + self.head_b[task]

    def _step(self, fb: torch.Tensor, h: torch.Tensor, task: torch.Tensor) -> tuple:
        """One recurrent step where row r uses the cell and output layer of task ``task[r]``
        (``fb`` [R, in], ``h`` [R, H], ``task`` [R]; inference, Algorithm 2): the rows are laid
        out by task in padded blocks for :meth:`_cells`. Returns ``(h_new [R, H], logit [R])``."""
        if self.shared_cell:
            h = self._gru(fb @ self.w_ih[0] + self.b_ih[0], h @ self.w_hh[0] + self.b_hh[0], h)
            return h, self._head(h, task)
        C, R, H = self.T, h.shape[0], h.shape[1]
        perm = torch.argsort(task, stable=True)
        cnt = torch.bincount(task, minlength=C)
        n_max = int(cnt.max())
        start = torch.cumsum(cnt, 0) - cnt
        cells = None
        if int((cnt > 0).sum()) < C:            # blocks for the tasks present only (few orders)
            cells = torch.nonzero(cnt).flatten()
            block = torch.zeros_like(cnt).index_copy_(0, cells, torch.arange(len(cells), device=cnt.device))
            C = len(cells)
        else:
            block = torch.arange(C, device=h.device)
        slot = torch.empty_like(perm)
        slot[perm] = block[task[perm]] * n_max + (torch.arange(R, device=h.device)
                                                  - start[task[perm]])
        hp = h.new_zeros(C * n_max, H).index_copy(0, slot, h).view(C, n_max, H)
        fp = fb.new_zeros(C * n_max, fb.shape[1]).index_copy(0, slot, fb).view(C, n_max, -1)
        hn, o = self._cells(fp, hp, cells=cells)
        return hn.reshape(C * n_max, H).index_select(0, slot), o.reshape(-1).index_select(0, slot)

    def encode(self, x):
        return self.proj(self.encoder(x))                                   # [B, H]

    def sample_kept(self, B: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Indices ``[B, k]`` of the orders kept for each example (uniform k-subsets)."""
        if self.k == self.M:
            return torch.arange(self.M).expand(B, self.M)
        u = torch.rand(B, self.M, generator=generator)
        return u.topk(self.k, dim=1).indices

    # ------------------------------------------------------------------ training forward
    def signed_feedback(self, y: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``(2y - 1) * mask`` over the chain tasks ``[B, T]``: +1 / -1 for present labels, 0 for
        missing ones (mask 0, or a non-finite label when no mask is given)."""
        yb = y[:, self.chain]
        ok = torch.isfinite(yb) if mask is None else (mask[:, self.chain] > 0) & torch.isfinite(yb)
        return torch.where(ok, 2.0 * yb - 1.0, torch.zeros_like(yb))

    def full_logits(self, chain_logits: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """Chain logits ``[B, K, T]`` + the extra heads on ``h0`` -> ``[B, K, D]`` (task order)."""
        if not self.extra:
            return chain_logits
        B, K, _ = chain_logits.shape
        D = sum(self.spec.out_dims)
        z = chain_logits.new_zeros(B, K, D).index_copy(2, self.chain_out, chain_logits)
        offs = self.spec.offsets
        for j, head in zip(self.extra, self.extra_heads):
            o = head(h0)                                                         # [B, out]
            z[:, :, offs[j]:offs[j] + o.shape[1]] = o[:, None, :].expand(B, K, -1)
        return z

    def plan_rows(self, kept: torch.Tensor) -> tuple:
        """Row layout of the teacher-forced forward for the kept orders ``[B, K]``.

        At step t the rows are the distinct (example, trie node) pairs of the kept orders; they
        sit in padded blocks, block c holding the rows whose node's task is c (one block for a
        shared cell), ``n`` slots each. Per step: ``src`` [C * n], the row of the previous step's
        padded states (of ``h0`` at t = 0) each slot continues (padding slots repeat row 0: their
        outputs are never read, so no gradient flows through them); ``slot`` [R], ``b`` [R] and
        ``node`` [R], each row's slot, example and trie node; ``fb_dst`` / ``fb_src`` [R], where
        in the flat ``[C * n, T]`` feedback and the flat ``[B, T]`` signed labels each row's
        fed-back label (the task of the step before) goes and comes from; ``task`` [C * n] for a
        shared cell (its output layer).
        ``where`` [B, K, T]: the position of each (example, kept order, step) logit in the
        concatenated padded outputs of all steps. Plain numpy: a few thousand integers per step.
        """
        kept = kept.detach().cpu().numpy()
        B, K = kept.shape
        trie, C = self._trie.np, (1 if self.shared_cell else self.T)
        plan, where, offset = [], np.empty((B, K, self.T), dtype=np.int64), 0
        lookup_prev = slot_prev = None
        for t in range(self.T):
            node = trie["node_of"][t][kept]                                 # [B, K]
            P = len(trie["task"][t])
            key = (node * B + np.arange(B)[:, None]).ravel()
            used = np.zeros(P * B, dtype=bool)
            used[key] = True
            uniq = np.flatnonzero(used)                                     # rows sorted by node
            rank = np.cumsum(used) - 1
            p_idx, b_idx = uniq // B, uniq % B
            R = len(uniq)
            inv = rank[key]
            task = trie["task"][t][p_idx]
            cell = np.zeros_like(task) if self.shared_cell else task
            counts = np.bincount(cell, minlength=C)
            n = int(counts.max())
            start = np.cumsum(counts) - counts
            used = np.flatnonzero(counts)        # blocks for the cells the step uses only
            block = np.zeros(C, dtype=np.int64)
            block[used] = np.arange(len(used))
            slot = block[cell] * n + (np.arange(R) - start[cell])
            nb = len(used)
            if t == 0:
                src_row = b_idx
            else:
                src_row = slot_prev[lookup_prev[b_idx, trie["parent"][t][p_idx]]]
            src = np.zeros(nb * n, dtype=np.int64)
            src[slot] = src_row
            prev = trie["prev_task"][t][p_idx]
            st = {"n": n, "src": src, "slot": slot, "b": b_idx, "node": p_idx,
                  "fb_dst": slot * self.T + prev, "fb_src": b_idx * self.T + prev,
                  "blocks": nb, "cells": None if nb == C else used}
            if self.shared_cell:
                st["task"] = np.zeros(nb * n, dtype=np.int64)
                st["task"][slot] = task
            plan.append({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                         for k, v in st.items()})
            where[:, :, t] = slot[inv.reshape(B, K)] + offset
            lookup_prev = np.full((B, P), -1, dtype=np.int64)
            lookup_prev[b_idx, p_idx] = np.arange(R)
            slot_prev, offset = slot, offset + nb * n
        return plan, where

    def forward(self, x, y, mask: Optional[torch.Tensor] = None,
                kept: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> ModelOutput:
        """Teacher-forced forward over the kept orders.

        Args:
            x: ``[B, ...]`` inputs; y: ``[B, T_all]`` labels in the canonical task order.
            mask: ``[B, T_all]`` presence mask; a missing chain label is fed back as 0.
            kept: ``[B, k]`` kept order indices; default: sampled (order dropout) in training mode,
                all M orders in eval mode.
        Returns:
            ``ModelOutput(logits [B, K, D], log_w [B, K])`` (D = T for binary-only specs).
        """
        h0 = self.encode(x)
        B, dev = h0.shape[0], h0.device
        if kept is None:
            kept = self.sample_kept(B, generator) if self.training else \
                torch.arange(self.M).expand(B, self.M)
        plan, where = self.plan_rows(kept)                                    # before the copy
        kept = kept.to(dev)
        K = kept.shape[1]
        sign = self.signed_feedback(y.to(h0.dtype), mask)                    # [B, T], 0: missing
        seen = self._trie_on(dev).seen
        T = self.T
        h_prev, outs = h0, []
        for t, st in enumerate(plan):
            n, C = st["n"], st["blocks"]
            hp = h_prev.index_select(0, st["src"].to(dev))                   # [C * n, H]
            fb = h0.new_zeros(C * n, T)                                      # label feedback
            if t > 0:
                if self.feedback_mode == "all":
                    fb[st["slot"].to(dev)] = (sign.index_select(0, st["b"].to(dev))
                                              * seen[t][st["node"].to(dev)])
                else:
                    fb.view(-1).index_copy_(0, st["fb_dst"].to(dev),
                                            sign.reshape(-1).index_select(0, st["fb_src"].to(dev)))
            cells = st["cells"]
            hn, o = self._cells(self.feedback(fb).view(C, n, -1), hp.view(C, n, -1),
                                st.get("task"), None if cells is None else cells.to(dev))
            h_prev = hn.reshape(C * n, -1)
            outs.append(o.reshape(-1))
        by_step = torch.cat(outs)[torch.from_numpy(where).to(dev)]           # [B, K, T] step order
        logits = torch.empty_like(by_step).scatter_(2, self.orders[kept], by_step)  # task order
        if self.order_logits is None:
            log_w = by_step.new_zeros(B, K)
        else:
            log_w = torch.log_softmax(self.order_logits[kept] / self.order_temperature,
                                      dim=1)                                 # log pi~ (eq. 25)
        return ModelOutput(self.full_logits(logits, h0), log_w)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, x, L: Optional[int] = None, generator: Optional[torch.Generator] = None,
                return_orders: bool = False):
        """Algorithm 2: L trajectories per example, each with an order drawn from pi and labels
        drawn step by step from Bernoulli(p); returns the mean probability ``[B, T]``
        (and the ``[B, L]`` sampled order indices when ``return_orders``).

        Trajectories of an example that have drawn the same tasks and labels so far are in the
        same state, so each step runs the cells once per distinct (state, next task) and every
        trajectory reads its row: the same draws and the same outputs as running all ``B * L``
        rows, at a fraction of the cost once pi and the predictions are confident (most of
        the L trajectories then follow one path)."""
        L = int(L or self.L)
        h0 = self.encode(x)
        B, dev, T = h0.shape[0], h0.device, self.T
        R = B * L
        pi = self.pi().to(dev)
        if self.M == 1:
            s = torch.zeros(R, dtype=torch.long, device=dev)
        else:
            s = torch.multinomial(pi.cpu(), R, replacement=True, generator=generator).to(dev)
        ords = self.orders[s]                                                # [R, T]
        state = torch.arange(B, device=dev).repeat_interleave(L)             # row -> its state
        h, fb = h0, h0.new_zeros(B, T)                        # per state: hidden, label feedback
        probs = torch.zeros(R, T, device=dev, dtype=h0.dtype)
        rows = torch.arange(R, device=dev)
        temp = self.temperature[self.chain_out]
        for t in range(T):
            task = ords[:, t]
            # the distinct (state, task) pairs of this step: run each once
            pair, row_pair = torch.unique(state * T + task, return_inverse=True)
            src, ptask = pair // T, pair % T
            hp, o = self._step(self.feedback(fb[src]), h[src], ptask)
            p = torch.sigmoid(o / temp[ptask])[row_pair]                     # [R]
            probs[rows, task] = p
            u = torch.rand(R, generator=generator).to(dev)
            label = (u < p).long()                                           # sampled label
            # the next states: a pair and its sampled label
            nxt, state = torch.unique(row_pair * 2 + label, return_inverse=True)
            of = nxt // 2
            h = hp[of]
            fb = (h0.new_zeros(len(nxt), T) if self.feedback_mode == "prev"
                  else fb[src[of]].clone())
            fb[torch.arange(len(nxt), device=dev), ptask[of]] = 2.0 * (nxt % 2).to(h0.dtype) - 1.0
        out = probs.view(B, L, T).mean(1)
        if self.extra:
            full = self.activate(self.full_logits(out[:, None, :], h0)[:, 0])       # [B, D]
            full[:, self.chain_out] = out
            out = full
        return (out, s.view(B, L)) if return_orders else out


# ---------------------------------------------------------------------------------- factories
def order_from_config(config, T: int) -> Optional[torch.Tensor]:
    """``config.order`` as a ``[1, T]`` tensor (None when unset); checked to be a permutation."""
    if config.order is None:
        return None
    order = [int(v) for v in config.order]
    if sorted(order) != list(range(T)):
        raise ConfigError(f"order: expected a permutation of 0..{T - 1}, got {config.order}")
    return torch.tensor([order])


def chain_length(spec: TaskSpec) -> int:
    """Length of the ordered chain of the sequential families: the binary tasks (expression and
    valence/arousal, where present, get their own heads on the shared encoder)."""
    return len(spec.indices("binary"))


def _sequential(config, spec: TaskSpec, input_shape, **kw) -> MultiOrderNet:
    enc, dim = encoder_from_config(config, input_shape)
    return MultiOrderNet(enc, dim, spec, hidden=config.hidden, feedback=config.feedback,
                         feedback_embed=config.feedback_embed, L=config.L, seed=config.seed, **kw)


@FAMILIES.register("monet")
def monet(config, spec: TaskSpec, input_shape) -> MultiOrderNet:
    """MONET: task-wise GRU cells, M seeded orders, k kept per example, learned order logits."""
    return _sequential(config, spec, input_shape, M=config.M, k=config.k,
                       orders=order_from_config(config, chain_length(spec)))


@FAMILIES.register("oracle")
def oracle(config, spec: TaskSpec, input_shape) -> MultiOrderNet:
    """MONET with M = 1 and a given order (``config.order``, the identity by default)."""
    orders = order_from_config(config, chain_length(spec))
    if orders is None:
        orders = torch.arange(chain_length(spec))[None]
    return _sequential(config, spec, input_shape, orders=orders)


@FAMILIES.register("mrnn")
def mrnn(config, spec: TaskSpec, input_shape) -> MultiOrderNet:
    """MRNN: one shared GRU cell over one order (``config.order``, else seeded random)."""
    orders = order_from_config(config, chain_length(spec))
    if orders is None:
        orders = random_orders(chain_length(spec), 1, config.seed)
    return _sequential(config, spec, input_shape, orders=orders, shared_cell=True)
