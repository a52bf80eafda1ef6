"""Batched, seeded sampling from a causal LM, and scoring of sampled tokens.

Prompts are always left-padded and position ids always follow the attention
mask: right padding or positions counted from the padded start silently
change what a model computes for the shorter prompts of a batch.

Four samplers give the same distribution (`distill.rl.backend`; `auto`, the
default, takes `graph` on CUDA and `loop` elsewhere): `loop` (a hand-written
KV-cache loop: each distinct prompt prefilled once for its G samples, finished
rows dropped every 8 tokens), `graph` (our decode step over a pre-allocated
cache, captured once per call as a CUDA graph and replayed; eager elsewhere),
`generate` (transformers' `model.generate`) and `static` (`generate` over a
pre-allocated cache, whose decode step transformers compiles on CUDA).
`bench/rollout.py`, 64 prompts x G=8 = 512 rows x 160 new tokens, H200 (random
GPU-config student, bf16 autocast): graph 243-259k tokens/s, loop 73k, static
66k, generate 33-35k, the loop before this work 69k. On this project's 2-core
CPU (demo student, 128 prompts): loop 2626, static 2260, generate 1873.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import StaticLayer

from rakd.data.format import model_prompt
from rakd.progress import Progress

Backend = Literal["auto", "generate", "loop", "static", "graph"]


def resolve_backend(backend: Backend, device: torch.device) -> Backend:
    """`auto`: `graph` on CUDA, `loop` elsewhere (what `bench/rollout.py` measured fastest on each: on an H200 at
    512 rows x 160 tokens graph 243-259k tokens/s, loop 73k, static 66k, generate 33-35k; on this project's 2-core
    CPU loop 2626, static 2260, generate 1873 on the demo student)."""
    if backend == "auto":
        return "graph" if device.type == "cuda" else "loop"
    return backend


COMPACT_EVERY = 8  # decode steps between EOS checks (and dropping finished rows) in the loop sampler


@dataclass
class Rollouts:
    """B sampled completions; tensors are (B, P) for prompts and (B, T) for completions."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor  # 1 up to and including the first EOS
    texts: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (ids, mask) for `questions` in the model's prompt format (its chat template when it has one, as
    validation asks it; else the project's); the tokenizer is left as it was."""
    texts, special = zip(*(model_prompt(tokenizer, q) for q in questions)) if questions else ((), (True,))
    batch = tokenizer(
        list(texts), padding=True, padding_side="left", return_tensors="pt", add_special_tokens=special[0]
    )
    return batch["input_ids"], batch["attention_mask"]


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (pads sit at 0 and are masked anyway)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 for tokens up to and including each row's first EOS, 0 after it."""
    is_eos = (ids == eos_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # EOS tokens strictly before this position
    return (eos_before == 0).long()


def _filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def no_cudnn_attention(device: torch.device):
    """A context in which SDPA leaves out its cuDNN kernel on CUDA (flash, memory-efficient and math remain).
    cuDNN builds an execution plan for every new shape, about 10 ms of host time each (H200, torch 2.11: 1.9 s
    of host time in 192 attention calls of one decode loop), and sampling and scoring meet new shapes all the
    time: the key length grows every decode step, rows leave the batch, every batch pads to its own length. The
    loop sampler at 512 rows x 160 tokens took 8.3 s with it and 0.79 s without; with shapes seen before (plans
    cached) the memory-efficient kernel was as fast (0.92 vs 0.88 s)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def attention_mask_4d(model, mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """The (B, 1, q, k) mask attention uses, built directly from a left-padded (B, k) mask: causal over the last
    `query_length` keys, pads never attended, and each query always sees itself (a pad query with nothing to
    attend to would give NaN). Passing it skips transformers' per-call mask construction, a third of a decode
    step's time for our small models. Bool for SDPA, additive float otherwise."""
    keys = mask.shape[1]
    rows = torch.arange(keys - query_length, keys, device=mask.device)[:, None]
    allowed = (torch.arange(keys, device=mask.device)[None, :] <= rows) & mask[:, None, None, :].bool()
    return _mask_for(model, allowed | (torch.arange(keys, device=mask.device)[None, :] == rows))


def _mask_for(model, allowed: torch.Tensor) -> torch.Tensor:
    """A bool (B, 1, q, k) mask as the model's attention takes it: bool for SDPA, additive float otherwise."""
    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=model.dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(model.dtype).min
    )


def _next_token(logits, temperature, top_p, generator):
    """One token per row: sampled from softmax(logits / temperature) (top-p filtered), or greedy at 0."""
    u = torch.rand((logits.shape[0], 1), generator=generator, device=logits.device) if temperature > 0 else None
    return _draw(logits, temperature, top_p, u)


def _draw(logits, temperature, top_p, u):
    """The token each row's uniform `u` (B, 1) picks from softmax(logits / temperature) (top-p filtered); greedy at
    temperature 0 (`u` unused). Inverting the CDF takes one uniform per row; `torch.multinomial` draws one
    exponential per vocabulary entry (17% of a decode loop's time on the demo's student). A zero-probability token
    is never drawn: the first index whose cumulative sum exceeds u * total is taken, and u * total < total in
    float32 (u ≤ 1 - 2^-24)."""
    if temperature > 0:
        cdf = _filter_top_p(logits.float() / temperature, top_p).softmax(-1).cumsum(-1)
        return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=cdf.shape[-1] - 1).squeeze(-1)
    return logits.argmax(-1)


@torch.no_grad()
def _sample_loop(model, ids, mask, *, max_new_tokens, temperature, top_p, eos_id, pad_id, generator, group_size=1):
    """The KV-cache decode loop. `ids`/`mask` hold each distinct prompt once when `group_size` > 1: the prompts
    are prefilled once and their cache expanded G times. Every `COMPACT_EVERY` tokens (the loop's only host
    synchronisation) rows that have emitted EOS leave the batch and the cache, so the rest decode a smaller one."""
    cache, logits, mask, positions = _prefill(model, ids, mask, group_size)
    rows = logits.shape[0]
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=ids.device)
    active = torch.arange(rows, device=ids.device)  # the output row of each batch row still decoding
    finished = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    for t in range(max_new_tokens):
        token = torch.where(
            finished, torch.full_like(active, pad_id), _next_token(logits, temperature, top_p, generator)
        )
        tokens[active, t] = token
        finished |= token == eos_id
        if t + 1 == max_new_tokens:
            break
        if (t + 1) % COMPACT_EVERY == 0:
            keep = torch.nonzero(~finished).squeeze(-1)
            if len(keep) == 0:
                break
            if len(keep) < len(active):
                cache.batch_select_indices(keep)
                active, token, mask, positions, finished = (x[keep] for x in (active, token, mask, positions, finished))
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        positions = positions + 1
        logits = model(
            input_ids=token[:, None],
            attention_mask=attention_mask_4d(model, mask, 1),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
    return _trim(tokens, eos_id)


def _prefill(model, ids, mask, group_size):
    """One forward over the distinct prompts into a DynamicCache, expanded G times: (cache, last logits, the mask
    and each row's last position, both repeated G times)."""
    cache = DynamicCache()
    positions = position_ids(mask)
    logits = model(
        input_ids=ids,
        attention_mask=attention_mask_4d(model, mask, ids.shape[1]),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    ).logits[:, -1]
    positions = positions[:, -1:]
    if group_size > 1:
        cache.batch_repeat_interleave(group_size)
        logits, mask, positions = (t.repeat_interleave(group_size, dim=0) for t in (logits, mask, positions))
    return cache, logits, mask, positions


class _StaticLayer(StaticLayer):
    """A StaticLayer that writes keys and values in its own dtype. Under autocast the keys leave the rotary
    embedding in the model's dtype and the values leave their projection in bf16: StaticLayer allocates both in
    the keys' dtype and then fails to write the values (`index_copy_`: Float and BFloat16), in transformers' own
    static-cache `generate` too. DynamicCache's concatenation promotes the values to the keys' dtype; so does
    this, so that every sampler computes alike."""

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        return super().update(key_states.to(self.dtype), value_states.to(self.dtype), cache_kwargs)


def _static_cache(model, length: int, like: DynamicCache | None = None) -> StaticCache:
    """A StaticCache of `length` columns (full-attention layers as `_StaticLayer`), holding `like`'s keys and
    values (a filled DynamicCache's) in its first columns when given."""
    cache = StaticCache(config=model.config, max_cache_len=length)
    cache.layers = [_StaticLayer(length) if type(layer) is StaticLayer else layer for layer in cache.layers]
    for index, filled in enumerate(like.layers if like is not None else []):
        columns = torch.arange(filled.keys.shape[2], device=filled.keys.device)
        cache.layers[index].update(filled.keys, filled.values, {"cache_position": columns})
    return cache


def _trim(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Completions up to the last row's EOS, as generate() stops (all of them when a row never ended)."""
    is_eos = tokens == eos_id
    if not bool(is_eos.any(1).all()):
        return tokens
    return tokens[:, : int(is_eos.float().argmax(1).max()) + 1]


@torch.no_grad()
def _sample_graph(model, ids, mask, *, max_new_tokens, temperature, top_p, eos_id, pad_id, generator, group_size=1):
    """Decoding over a pre-allocated cache whose every step is one fixed sequence of kernels on fixed buffers, so
    that on CUDA it is captured once as a CUDA graph and replayed: no per-token Python, allocation or kernel
    launches beyond one replay. The step reads its token's uniform from a table drawn up front, writes the key
    and value at the step's cache column (`StaticCache`), opens that column in the attention mask, advances
    positions and counters in place and records the token; finished rows emit pad. The host checks for
    all-finished every `COMPACT_EVERY` steps (rows cannot leave a fixed-shape batch). The prompt is prefilled
    once per distinct prompt, as in `loop`, and copied into the static cache. Elsewhere the same step runs
    eagerly."""
    dynamic, logits, mask, positions = _prefill(model, ids, mask, group_size)
    rows, prompt_len, device = logits.shape[0], ids.shape[1], ids.device
    cache = _static_cache(model, prompt_len + max_new_tokens, like=dynamic)
    del dynamic
    allowed = torch.zeros((rows, 1, 1, prompt_len + max_new_tokens), dtype=torch.bool, device=device)
    allowed[:, 0, 0, :prompt_len] = mask.bool()
    uniforms = torch.rand((max_new_tokens, rows, 1), generator=generator, device=device) if temperature > 0 else None
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    tokens[:, 0] = _draw(logits, temperature, top_p, uniforms[0] if uniforms is not None else None)
    finished = tokens[:, 0] == eos_id
    token = tokens[:, :1].clone()
    step = torch.zeros(1, dtype=torch.long, device=device)  # the column of `tokens` last written
    column = torch.full((1,), prompt_len, dtype=torch.long, device=device)  # the cache column `token` goes to

    def decode():
        allowed.index_fill_(-1, column, True)
        positions.add_(1)
        logits = model(
            input_ids=token,
            attention_mask=_mask_for(model, allowed),
            position_ids=positions,
            past_key_values=cache,
            cache_position=column,
            use_cache=True,
        ).logits[:, -1]
        column.add_(1)
        step.add_(1)
        u = uniforms.index_select(0, step).squeeze(0) if uniforms is not None else None
        new = torch.where(finished, pad_id, _draw(logits, temperature, top_p, u))
        tokens.index_copy_(1, step, new[:, None])
        finished.logical_or_(new == eos_id)
        token.copy_(new[:, None])

    run, done = decode, 1
    if device.type == "cuda" and max_new_tokens > 2:
        run, done = _captured(decode), 2  # the warm-up before capture is decode step 1
    for t in range(done, max_new_tokens):
        if t % COMPACT_EVERY == 0 and bool(finished.all()):
            break
        run()
    return _trim(tokens, eos_id)


def _captured(step):
    """Run `step` once (warm-up, on a side stream as capture requires), then capture it as a CUDA graph and return
    its replay. Autocast's cast cache is off inside: a cached bf16 weight copy made before capture would be freed
    under the graph."""
    autocast_on = torch.is_autocast_enabled("cuda")
    cast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=autocast_on, cache_enabled=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), cast:
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), cast:
        step()
    return graph.replay


@torch.no_grad()
def _sample_generate(model, ids, mask, *, max_new_tokens, temperature, top_p, eos_id, pad_id, generator, cache=None):
    """transformers' `generate`; `cache="static"` pre-allocates the KV cache for prompt + max_new_tokens, and on
    CUDA transformers then compiles the decode step once (torch.compile, "reduce-overhead": CUDA graphs)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    if cache == "static":  # ours, not cache_implementation="static": that one fails under autocast (_StaticLayer)
        cache = _static_cache(model, ids.shape[1] + max_new_tokens)
    with torch.random.fork_rng(devices=[ids.device] if ids.device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=top_p if temperature > 0 else None,
            top_k=0 if temperature > 0 else None,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            past_key_values=cache,
        )
    return out[:, ids.shape[1] :]


_SAMPLERS = {
    "loop": _sample_loop,
    "graph": _sample_graph,
    "generate": _sample_generate,
    "static": partial(_sample_generate, cache="static"),
}


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    backend: Backend = "auto",
    progress: str | None = None,
    group_size: int = 1,
) -> Rollouts:
    """Sample one completion per question (repeat questions for G per prompt); temperature 0 is greedy.
    With `group_size` G > 1, `questions` holds each prompt G times in a row and the loop sampler prefills each
    prompt once for its G samples. `progress` names a progress display over the batches (shown when there is
    more than one)."""
    if group_size > 1:
        if len(questions) % group_size or any(
            questions[i] != questions[i - i % group_size] for i in range(len(questions))
        ):
            raise ValueError(f"group_size={group_size}: questions must repeat each prompt {group_size} times in a row")
        batch_size = max(group_size, batch_size - batch_size % group_size)
    device = next(model.parameters()).device
    backend = resolve_backend(backend, device)
    shared = group_size if backend in ("loop", "graph") else 1
    generator = torch.Generator(device=device).manual_seed(seed)  # the uniforms are drawn on the model's device
    parts = []
    batches = range(0, len(questions), batch_size)
    shown = (
        Progress(progress, len(batches), every=max(1, len(batches) // 4), unit="batch")
        if progress and len(batches) > 1
        else None
    )
    for index, start in enumerate(batches):
        ids, mask = encode_prompts(tokenizer, questions[start : start + batch_size : shared])
        with no_cudnn_attention(device):
            completion = _SAMPLERS[backend](
                model,
                ids.to(device),
                mask.to(device),
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                eos_id=tokenizer.eos_token_id,
                pad_id=tokenizer.pad_token_id,
                generator=generator,
                **({"group_size": shared} if shared > 1 else {}),
            )
        if shared > 1:
            ids, mask = ids.repeat_interleave(shared, dim=0), mask.repeat_interleave(shared, dim=0)
        parts.append((ids, mask, completion.cpu()))
        if shown:
            shown.update(index)
    return _assemble(parts, tokenizer)


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """One batch from several (prompts re-padded on the left, completions on the right)."""
    if len(parts) == 1:
        return parts[0]
    width_p = max(p.prompt_ids.shape[1] for p in parts)
    width_c = max(p.completion_ids.shape[1] for p in parts)

    def left(t, value):
        return F.pad(t, (width_p - t.shape[1], 0), value=value)

    def right(t, value):
        return F.pad(t, (0, width_c - t.shape[1]), value=value)

    return Rollouts(
        torch.cat([left(p.prompt_ids, pad_id) for p in parts]),
        torch.cat([left(p.prompt_mask, 0) for p in parts]),
        torch.cat([right(p.completion_ids, pad_id) for p in parts]),
        torch.cat([right(p.completion_mask, 0) for p in parts]),
        [text for p in parts for text in p.texts],
    )


def _assemble(parts, tokenizer) -> Rollouts:
    width_p = max(p[0].shape[1] for p in parts)
    width_c = max(p[2].shape[1] for p in parts)
    pad = tokenizer.pad_token_id
    prompt_ids = torch.cat([F.pad(ids, (width_p - ids.shape[1], 0), value=pad) for ids, _, _ in parts])
    prompt_mask = torch.cat([F.pad(mask, (width_p - mask.shape[1], 0), value=0) for _, mask, _ in parts])
    completion_ids = torch.cat([F.pad(c, (0, width_c - c.shape[1]), value=pad) for _, _, c in parts])
    cmask = completion_mask(completion_ids, tokenizer.eos_token_id)
    # a pad the model emitted (only an untrained one does) ends its completion: no masked holes inside a row,
    # whose later tokens the sampler computed with the pad in context but a scorer would compute without it
    emitted_pad = ((completion_ids == pad) & (completion_ids != tokenizer.eos_token_id)).long()
    cmask &= (emitted_pad.cumsum(-1) == 0).long()
    texts = tokenizer.batch_decode(completion_ids * cmask + pad * (1 - cmask), skip_special_tokens=True)
    return Rollouts(prompt_ids, prompt_mask, completion_ids, cmask, texts)


def batch_ids(batch: Rollouts, device: torch.device) -> list[torch.Tensor]:
    """(prompt ids, prompt mask, completion ids, completion mask) on `device`: `forward_completion`'s arguments."""
    return [t.to(device) for t in (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)]


def forward_completion(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits (B, T, V) that predict each completion token, from one forward pass over prompt+completion."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    full = attention_mask_4d(model, mask, ids.shape[1])
    with no_cudnn_attention(ids.device):
        logits = model(input_ids=ids, attention_mask=full, position_ids=position_ids(mask), use_cache=False).logits
    start = prompt_ids.shape[1]
    return logits[:, start - 1 : -1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token) at each position from logits (B, T, V) and tokens (B, T)."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def trimmed(rollouts: Rollouts) -> Rollouts:
    """The same rows without the prompt columns that are padding in every row (on the left) and the completion
    columns past every row's end (on the right): what a forward pass over them would waste."""
    prompt_cols = rollouts.prompt_mask.any(0).nonzero()
    first = int(prompt_cols.min()) if len(prompt_cols) else rollouts.prompt_mask.shape[1]
    used = rollouts.completion_mask.any(0).nonzero()
    width = int(used.max()) + 1 if len(used) else 1  # the last column any row uses
    return Rollouts(
        rollouts.prompt_ids[:, first:],
        rollouts.prompt_mask[:, first:],
        rollouts.completion_ids[:, :width],
        rollouts.completion_mask[:, :width],
        rollouts.texts,
    )


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


def _forest(trees: list[_Tree]) -> PrefixForest:
    """The trees packed into sequences as long as the longest tree: first fit, largest first, so several small
    trees share a sequence instead of each padding to the width (a tree's tokens attend only within it). The
    width, hence each sequence's attention cost, is what one tree per sequence would give; only padding goes."""
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
    )


def _forest_forward(model: PreTrainedModel, forest: PrefixForest) -> torch.Tensor:
    """Logits (S * L, V) of every token of the forest's sequences, flattened."""
    device = next(model.parameters()).device
    with no_cudnn_attention(device):
        return model(
            input_ids=forest.ids.to(device),
            attention_mask=_mask_for(model, forest.allowed.to(device)[:, None]),
            position_ids=forest.positions.to(device),
            use_cache=False,
        ).logits.flatten(0, 1)


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
    prefixes are compute saved (teacher scoring 1.9-2.8x faster on the demo's samples). On an H200 (torch 2.11,
    the GPU config's sizes, 512 rows x up to 160 tokens, `bench/gpu_profile.py`) building the forests took the
    host 0.16 s, and scoring the 512 rows with the 34M teacher took 0.188 s as forests against 0.059 s as plain
    padded passes; an update's forward + backward over 256 rows 0.104 against 0.024 s: the GPU recomputes the
    shared prefixes faster than the host finds them."""
    return device.type == "cpu"


def forest_logits(model: PreTrainedModel, rollouts: Rollouts, packed: bool | None = None) -> torch.Tensor:
    """`forward_completion`'s logits (B, T, V), each predicting a completion token. Packed (the default where
    `packs_forests`), from one forward pass over the batch as a prefix forest: each distinct prompt and
    completion prefix computed once, and gradients flow to it from every row that shares it; else one plain
    padded pass. Entries past a row's end are arbitrary (masked by the caller)."""
    rows, width = len(rollouts.texts), rollouts.completion_ids.shape[1]
    if not rows:
        raise ValueError("forest_logits of an empty batch")
    device = next(model.parameters()).device
    if not (packs_forests(device) if packed is None else packed):
        return forward_completion(model, *batch_ids(rollouts, device))
    (forest,) = prefix_forests(rollouts, rows)
    flat = _forest_forward(model, forest)
    logits = flat[forest.predictors.to(flat.device)][torch.argsort(forest.rows).to(flat.device)]
    return F.pad(logits, (0, 0, 0, width - logits.shape[1]))


def score_completions(
    model: PreTrainedModel,
    rollouts: Rollouts,
    batch_size: int | None = None,
    temperature: float = 1.0,
    packed: bool | None = None,
) -> torch.Tensor:
    """Per-token log-probabilities (B, T) of the sampled tokens under `model` on logits / `temperature`, no grad
    (0 past each row's end), in chunks of at most `batch_size` rows (default: 64 on a CPU, 256 on an
    accelerator). Packed (the default where `packs_forests`), each chunk is a prefix forest (`prefix_forests`):
    each distinct prompt and each distinct completion prefix is computed once; else chunks of rows of similar
    length go through as plain padded passes over prompt + completion."""
    device = next(model.parameters()).device
    batch_size = batch_size or (64 if device.type == "cpu" else 256)
    scores = torch.zeros(rollouts.completion_ids.shape, dtype=torch.float32)
    with torch.no_grad():
        if packs_forests(device) if packed is None else packed:
            for forest in prefix_forests(rollouts, batch_size):
                logprobs = forest_logprobs(model, forest, temperature).cpu()
                scores[forest.rows, : logprobs.shape[1]] = logprobs
            return scores
        lengths = rollouts.prompt_mask.sum(-1) + rollouts.completion_mask.sum(-1)
        for rows in torch.argsort(lengths, stable=True).split(batch_size):
            chunk = trimmed(select_rows(rollouts, rows))
            ids = batch_ids(chunk, device)
            logits = forward_completion(model, *ids)
            logprobs = token_logprobs(logits, ids[2], temperature).float().cpu()
            scores[rows, : logprobs.shape[1]] = logprobs * chunk.completion_mask
    return scores


def select_rows(rollouts: Rollouts, rows: torch.Tensor) -> Rollouts:
    return Rollouts(
        rollouts.prompt_ids[rows],
        rollouts.prompt_mask[rows],
        rollouts.completion_ids[rows],
        rollouts.completion_mask[rows],
        [rollouts.texts[i] for i in rows.tolist()],
    )
