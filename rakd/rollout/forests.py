"""Prefix forests: a batch's rows packed so that each distinct prompt and completion prefix is computed once.

The rows of each distinct prompt become one tree, the prompt followed by the trie of their completions, flattened
into sequences with a 4-D mask: a token attends to its prompt and its ancestors in the trie, and takes the
position it has in its own row. A prefix every prompt of a forest begins with (a chat template's system prompt)
is computed once more: its keys and values are shared by every sequence, as a cache the pass attends to, and its
gradient is the sum of its rows'. Scoring and the update read a row's log-probs along its path (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

from rakd.rollout.batch import MIN_SHARED_PREFIX, Rollouts, position_ids
from rakd.rollout.masks import attention_mask_4d, mask_for_model, no_cudnn_attention


@dataclass
class _Tree:
    """One distinct prompt and the prefix tree (trie) of its rows' completions, flattened: the prompt's tokens,
    then each distinct completion prefix's last token once, parents before children."""

    tokens: list[int]
    positions: list[int]
    prompt_len: int
    parents: list[int] = field(default_factory=list)  # per completion token (index prompt_len + i): its parent
    rows: list[int] = field(default_factory=list)
    paths: list[list[int]] = field(default_factory=list)  # per row: the index of each completion token
    predictors: list[list[int]] = field(default_factory=list)  # per row: the index of the token before each


FOREST_MAX_TOKENS = 1024  # a prompt's tree grows past this in a new sequence (attention is dense in L)


def _prefix_trees(rollouts: Rollouts, max_tokens: int = FOREST_MAX_TOKENS) -> list[_Tree]:
    """Every row of `rollouts` in the tree of its prompt (rows with the same prompt ids and mask share one). A
    row whose new prefixes would take its prompt's tree past `max_tokens` starts another tree for that prompt:
    attention over a sequence costs its length squared, so rows that share little are better apart."""
    prompts = torch.cat([rollouts.prompt_ids, rollouts.prompt_mask], dim=1)
    group = torch.unique(prompts, dim=0, return_inverse=True)[1].tolist() if len(prompts) else []
    trees: list[_Tree] = []
    current: dict[int, tuple[_Tree, dict[tuple[int, int], int]]] = {}  # group -> its growing tree and trie
    for row, (g, n, completion) in enumerate(
        zip(group, rollouts.completion_mask.sum(-1).tolist(), rollouts.completion_ids.tolist())
    ):
        completion, path, before = completion[:n], [], []
        if g in current:  # the row's head that the tree already holds: one walk down the trie
            tree, trie = current[g]
            parent = tree.prompt_len - 1
            while len(path) < n and (parent, completion[len(path)]) in trie:
                before.append(parent)
                parent = trie[(parent, completion[len(path)])]
                path.append(parent)
            if len(path) < n and len(tree.tokens) + n - len(path) > max_tokens:  # a row that adds nothing joins
                del current[g]
                path, before = [], []
        if g not in current:
            prompt = rollouts.prompt_ids[row][rollouts.prompt_mask[row].bool()].tolist()
            if not prompt:
                raise ValueError(f"row {row} has an empty prompt: nothing predicts its first completion token")
            current[g] = (_Tree(prompt, list(range(len(prompt))), len(prompt)), {})
            trees.append(current[g][0])
        tree, trie = current[g]
        parent = path[-1] if path else tree.prompt_len - 1
        for token in completion[len(path) :]:  # past the shared head every token is a new node
            node = trie[(parent, token)] = len(tree.tokens)
            tree.tokens.append(token)
            tree.positions.append(tree.positions[parent] + 1)
            tree.parents.append(parent)
            before.append(parent)
            path.append(node)
            parent = node
        tree.rows.append(row)
        tree.paths.append(path)
        tree.predictors.append(before)
    return trees


@dataclass
class PrefixForest:
    """Rows packed as one tree per distinct prompt (`_Tree`; more than one where its tree would grow past
    `FOREST_MAX_TOKENS`), several small trees to a sequence as long as the longest: the prompt, then the trie of
    its rows' completions, each distinct prefix computed once (a group's G samples often agree for many tokens,
    or entirely). A token attends to its prompt and its
    ancestors and sits at the position it has in each row that passes through it, so its logits are those of a
    plain pass over any of those rows."""

    rows: torch.Tensor  # (R,) the packed rows of the batch
    ids: torch.Tensor  # (S, L) right-padded
    sizes: torch.Tensor  # (S,) real tokens in each sequence (per tree: its prompt's, one per distinct prefix)
    positions: torch.Tensor  # (S, L)
    allowed: torch.Tensor  # (S, L, L) bool: query attends key
    paths: torch.Tensor  # (R, T) flat index (s * L + i) of each completion token; 0 past a row's end
    predictors: torch.Tensor  # (R, T) flat index of the token before it, whose logits predict it
    valid: torch.Tensor  # (R, T) bool
    prefix: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (P,) shared by all


def prefix_forests(rollouts: Rollouts, rows: int, max_tokens: int = FOREST_MAX_TOKENS) -> list[PrefixForest]:
    """`rollouts` as prefix forests of at most `rows` rows each (a group larger than that alone), the trees sorted
    by size so that a forest's sequences carry little padding; a tree holds at most `max_tokens` tokens unless
    one row alone is longer."""
    trees = sorted(_prefix_trees(rollouts, max_tokens), key=lambda t: len(t.tokens))
    chunks: list[list[_Tree]] = []
    for tree in trees:
        if chunks and sum(len(t.rows) for t in chunks[-1]) + len(tree.rows) <= rows:
            chunks[-1].append(tree)
        else:
            chunks.append([tree])
    return [_forest(chunk) for chunk in chunks]


def _common_prefix(trees: list[_Tree]) -> int:
    """How many tokens the prompts of `trees` all begin with, short of each prompt's last (whose state predicts
    its rows' first completion token); 0 for one tree, or when fewer than `MIN_SHARED_PREFIX`."""
    if len(trees) < 2:
        return 0
    shortest, first = min(t.prompt_len for t in trees), trees[0].tokens
    n = 0
    while n < shortest - 1 and all(t.tokens[n] == first[n] for t in trees):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def _without_prefix(tree: _Tree, n: int) -> _Tree:
    """`tree` without its first `n` prompt tokens (computed apart, once for the forest); positions stay those of
    the row."""
    if n == 0:
        return tree
    return _Tree(
        tokens=tree.tokens[n:],
        positions=tree.positions[n:],
        prompt_len=tree.prompt_len - n,
        parents=[p - n for p in tree.parents],
        rows=tree.rows,
        paths=[[i - n for i in path] for path in tree.paths],
        predictors=[[i - n for i in path] for path in tree.predictors],
    )


def _forest(trees: list[_Tree]) -> PrefixForest:
    """The trees packed into sequences as long as the longest tree: first fit, largest first, so several small
    trees share a sequence instead of each padding to the width (a tree's tokens attend only within it). The
    width, hence each sequence's attention cost, is what one tree per sequence would give; only padding goes.
    The prompts' common prefix (`_common_prefix`) leaves the trees, to be computed once (`forest_pass`)."""
    shared = _common_prefix(trees)
    prefix = torch.tensor(trees[0].tokens[:shared], dtype=torch.long)
    trees = [_without_prefix(t, shared) for t in trees]
    width = max(len(t.tokens) for t in trees)
    placed: list[tuple[_Tree, int, int]] = []  # (tree, sequence, offset)
    used: list[int] = []
    for tree in sorted(trees, key=lambda t: -len(t.tokens)):
        s = next((i for i, n in enumerate(used) if n + len(tree.tokens) <= width), len(used))
        if s == len(used):
            used.append(0)
        placed.append((tree, s, used[s]))
        used[s] += len(tree.tokens)
    depth = max((len(p) for t in trees for p in t.paths), default=0) or 1
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(used), 1, 1)  # a pad query sees itself (no NaN)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for tree, s, o in placed:
        allowed[s, o : o + tree.prompt_len, o : o + tree.prompt_len] = causal[: tree.prompt_len, : tree.prompt_len]
    # a completion token sees what its parent sees, and itself: filled a depth at a time, parents first
    seq = torch.tensor([s for t, s, _ in placed for _ in t.parents], dtype=torch.long)
    node = torch.tensor([o + i for t, _, o in placed for i in range(t.prompt_len, len(t.tokens))], dtype=torch.long)
    parent = torch.tensor([o + p for t, _, o in placed for p in t.parents], dtype=torch.long)
    level = torch.tensor([q - t.prompt_len for t, _, _ in placed for q in t.positions[t.prompt_len :]])
    order = torch.argsort(level, stable=True)
    for part in order.split(torch.bincount(level).tolist()) if len(level) else []:
        s, n, p = seq[part], node[part], parent[part]
        allowed[s, n] = allowed[s, p]
        allowed[s, n, n] = True

    def padded(lists: list[list[int]], size: int) -> torch.Tensor:
        return torch.tensor([x + [0] * (size - len(x)) for x in lists], dtype=torch.long)

    def packed(field: str) -> torch.Tensor:  # per sequence: its trees' tokens or positions, one after another
        lists: list[list[int]] = [[] for _ in used]
        for tree, s, _ in placed:
            lists[s] += getattr(tree, field)
        return padded(lists, width)

    paths = padded([[o + i for i in p] for t, _, o in placed for p in t.paths], depth)
    predictors = padded([[o + i for i in p] for t, _, o in placed for p in t.predictors], depth)
    valid = torch.arange(depth)[None] < torch.tensor([len(p) for t, _, _ in placed for p in t.paths])[:, None]
    owner = torch.tensor([s for t, s, _ in placed for _ in t.rows], dtype=torch.long)
    offset = (owner * width)[:, None]
    return PrefixForest(
        rows=torch.tensor([row for t, _, _ in placed for row in t.rows], dtype=torch.long),
        ids=packed("tokens"),
        sizes=torch.tensor(used),
        positions=packed("positions"),
        allowed=allowed,
        paths=(paths + offset) * valid,
        predictors=(predictors + offset) * valid,
        valid=valid,
        prefix=prefix,
    )


def forest_pass(module, model: PreTrainedModel, forest: PrefixForest):
    """One pass of `module` (`model` itself, or its backbone `model.base_model`) over the forest's sequences: each
    token at its position in its rows, attending to its prompt and its ancestors. The forest's shared prefix goes
    through the backbone first, once, and every sequence attends to its keys and values."""
    device = next(model.parameters()).device
    allowed, past = forest.allowed.to(device)[:, None], None
    with no_cudnn_attention(device):
        if len(forest.prefix):
            past = _prefix_cache(model, forest.prefix.to(device), len(forest.ids))
            allowed = torch.cat([allowed.new_ones(*allowed.shape[:3], len(forest.prefix)), allowed], dim=-1)
        return module(
            input_ids=forest.ids.to(device),
            attention_mask=mask_for_model(model, allowed),
            position_ids=forest.positions.to(device),
            past_key_values=past,
            use_cache=False,
        )


def _prefix_cache(model: PreTrainedModel, prefix: torch.Tensor, sequences: int) -> DynamicCache:
    """The keys and values of `prefix` (P,) at positions 0..P-1, one pass of the backbone, repeated for
    `sequences` sequences (in the graph: the gradients of every sequence's reads sum into the one pass)."""
    from torch.distributed.fsdp import FSDPModule

    cache = DynamicCache()
    ones = torch.ones_like(prefix)[None]
    backbone = model if isinstance(model, FSDPModule) else model.base_model  # a sharded model's root gathers
    backbone(
        input_ids=prefix[None],
        attention_mask=attention_mask_4d(model, ones, len(prefix)),
        position_ids=position_ids(ones),
        past_key_values=cache,
        use_cache=True,
    )
    cache.batch_repeat_interleave(sequences)
    return cache


def _forest_forward(model: PreTrainedModel, forest: PrefixForest) -> torch.Tensor:
    """Logits (S * L, V) of every token of the forest's sequences, flattened."""
    return forest_pass(model, model, forest).logits.flatten(0, 1)


def forest_logprobs(model: PreTrainedModel, forest: PrefixForest, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probabilities (R, T) of the forest's rows under `model` on logits / `temperature` (0 past a
    row's end), from one forward pass over its sequences."""
    scaled = _forest_forward(model, forest).float() / temperature
    device = scaled.device
    predictors, paths = forest.predictors.to(device), forest.paths.to(device)
    picked = scaled[predictors, forest.ids.to(device).flatten()[paths]] - torch.logsumexp(scaled, -1)[predictors]
    return picked * forest.valid.to(device)


def packs_forests(device: torch.device) -> bool:
    """Whether scoring and the update pack rows as prefix forests on `device`: on a CPU only. There the shared
    prefixes are compute saved; on a GPU the device recomputes them faster than the host finds them
    (`bench/gpu_profile.py`; docs/design.md has both measurements)."""
    return device.type == "cpu"
