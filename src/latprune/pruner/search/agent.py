"""The ``graph-rl`` agent: REINFORCE over per-group widths, one group at a time.

An episode visits the groups in order. At group g the state is g's node embedding (the trained
GCN's, at full width) and the latency spent so far: the LUT's prediction with the groups decided
up to g at their choices and g and every later group at their narrowest, as a share of the
target, and how far through the groups the episode is. Each of g's options is scored by an MLP
over the state and the option (its width share and the latency it adds); options that would put
the prediction over the target are masked, so every episode ends within the budget; the budget it
leaves is then spent by :meth:`Space.project`, as the evolution's candidates are. The reward is
the candidate's score (the accuracy of its generated weights); the update is REINFORCE with a
moving-average baseline, the advantage scaled by a moving estimate of the rewards' spread.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from latprune.pruner.search.space import SearchResult, Space, Widths

STATE = 2    # besides the embedding: latency spent (share of the target), share of groups decided
OPTION = 2   # per option: its width share, the latency it adds (share of the target)


class Policy(nn.Module):
    """Logits over one group's options from ``[embedding, state, option]``."""

    def __init__(self, embedding: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(embedding + STATE + OPTION, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, state: torch.Tensor, options: torch.Tensor) -> torch.Tensor:  # (S,), (K, OPTION) -> (K,)
        x = torch.cat([state.expand(len(options), -1), options], dim=1)
        return self.mlp(x).squeeze(1)


def episode(policy: Policy, space: Space, embeddings: torch.Tensor, gen: torch.Generator
            ) -> tuple[Widths, torch.Tensor]:
    """One width vector drawn from ``policy`` within the target (then projected onto it), and the
    sum of its log-probabilities."""
    groups = sorted(space.options)
    widths = space.narrowest()  # the groups not yet decided sit at their narrowest
    log_prob = torch.zeros(())
    for i, g in enumerate(groups):
        opts = space.options[g]
        lat = torch.tensor([space.predictor.predict({**widths, g: w}) for w in opts]) / space.target_ms
        state = torch.cat([embeddings[g], torch.tensor([float(lat[0]), i / len(groups)])])
        feats = torch.stack([torch.tensor(opts, dtype=torch.float32) / max(opts), lat - lat[0]], dim=1)
        logits = policy(state, feats).masked_fill(lat > 1.0, float("-inf"))
        logp = torch.log_softmax(logits, 0)
        choice = int(torch.multinomial(logp.detach().exp(), 1, generator=gen))
        log_prob = log_prob + logp[choice]
        widths[g] = opts[choice]
    return space.project(widths), log_prob


def reinforce(space: Space, embeddings: torch.Tensor, reward: Callable[[Widths], float], episodes: int,
              lr: float = 0.01, seed: int = 0, beta: float = 0.9,
              on_episode: Callable[[float, float], object] | None = None) -> SearchResult:
    """Train a :class:`Policy` for ``episodes`` episodes; every candidate it drew, with its reward.
    ``embeddings``: (N, E), one row per group id (normalised here); ``on_episode(reward, best)``
    after each episode (a progress bar's tick)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    emb = embeddings.detach()
    emb = (emb - emb.mean(0)) / (emb.std(0, unbiased=False) + 1e-6)
    policy = Policy(emb.shape[1])
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    result = SearchResult()
    baseline: float | None = None
    spread = 0.0
    for _ in range(episodes):
        widths, log_prob = episode(policy, space, emb, gen)
        r = reward(widths)
        result.add(r, widths)
        if baseline is not None:
            advantage = (r - baseline) / (spread ** 0.5 + 1e-3)
            opt.zero_grad()
            (-advantage * log_prob).backward()
            opt.step()
            spread = beta * spread + (1 - beta) * (r - baseline) ** 2
        baseline = r if baseline is None else beta * baseline + (1 - beta) * r
        result.trace.append({"reward": r, "baseline": baseline})
        if on_episode is not None:
            on_episode(r, result.best[0])
    return result
