"""Batched, seeded sampling from a causal LM: four samplers that give the same distribution.

`distill.rl.backend` picks one (`auto`, the default, takes `graph` on CUDA and `loop` elsewhere): `loop` (a
hand-written KV-cache loop: each distinct prompt prefilled once for its G samples, finished rows dropped every 8
tokens), `graph` (our decode step over a pre-allocated cache, captured once per call as a CUDA graph and
replayed; eager elsewhere), `generate` (transformers' `model.generate`) and `static` (`generate` over a
pre-allocated cache, whose decode step transformers compiles on CUDA). `bench/rollout.py` measures them
(bench/README.md has the figures).
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer

from rakd.progress import Progress
from rakd.rollout.batch import MIN_SHARED_PREFIX, Rollouts, assemble, encode_prompts, position_ids
from rakd.rollout.masks import attention_mask_4d, mask_for_model, no_cudnn_attention
from rakd.schema import Backend


def resolve_backend(backend: Backend, device: torch.device) -> Backend:
    """`auto`: `graph` on CUDA, `loop` elsewhere (what `bench/rollout.py` measured fastest on each)."""
    if backend == "auto":
        return "graph" if device.type == "cuda" else "loop"
    return backend


COMPACT_EVERY = 8  # decode steps between EOS checks (and dropping finished rows) in the loop sampler


def _filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _next_token(logits, temperature, top_p, generator):
    """One token per row of `logits` (B, V): sampled from softmax(logits / temperature) (top-p filtered), or
    greedy at 0."""
    u = torch.rand((logits.shape[0], 1), generator=generator, device=logits.device) if temperature > 0 else None
    columns = (logits.float() / temperature).t() if temperature > 0 else logits.t()
    return _draw(columns, top_p, u)


# Vocabulary entries per block of the two-level draw (`_draw`).
DRAW_BLOCK = 256


def _draw(columns: torch.Tensor, top_p: float, u: torch.Tensor | None) -> torch.Tensor:
    """The token (B,) each row's uniform `u` (B, 1) picks from the softmax of its column of `columns` (V, B):
    logits already divided by the temperature, vocabulary-major as `_StepHead` computes them, overwritten here;
    greedy (the argmax) when `u` is None. The CDF is inverted in two levels, without a cumulative sum over the
    whole vocabulary: the probabilities' sums per block of `DRAW_BLOCK` entries pick the block that holds u *
    total, then the cumulative sum inside that block alone picks the token. A token of zero probability is never
    drawn: the chosen block's sum exceeds u * total minus what the blocks before it hold, and the chosen entry is
    the first of that block whose running sum passes the rest (an entry of zero adds nothing, so it is never the
    first to pass), or, where float rounding leaves the block's running sum short of its total, the block's last
    entry of non-zero probability. Under top-p the rows are filtered and inverted whole."""
    if u is None:
        return columns.argmax(0)
    if top_p < 1.0:
        cdf = _filter_top_p(columns.t(), top_p).softmax(-1).cumsum(-1).contiguous()
        return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=cdf.shape[-1] - 1).squeeze(-1)
    vocab, rows = columns.shape
    probs = columns.sub_(columns.amax(0)).exp_()  # unnormalised; u * total below does the normalising
    whole = vocab // DRAW_BLOCK * DRAW_BLOCK
    sums = probs[:whole].view(-1, DRAW_BLOCK, rows).sum(1)
    if whole < vocab:
        sums = torch.cat([sums, probs[whole:].sum(0, keepdim=True)])
    cumulative = sums.cumsum(0)  # (blocks, B)
    target = u.squeeze(-1) * cumulative[-1]
    block = (cumulative <= target).sum(0).clamp(max=len(sums) - 1)
    before = torch.where(block > 0, cumulative.gather(0, (block - 1).clamp(min=0)[None])[0], 0.0)
    offsets = torch.arange(DRAW_BLOCK, device=columns.device)[:, None]
    index = block[None] * DRAW_BLOCK + offsets  # (DRAW_BLOCK, B): the chosen block's entries
    inside = probs.gather(0, index.clamp(max=vocab - 1)).masked_fill_(index >= vocab, 0.0)
    passed = (inside.cumsum(0) <= (target - before)).sum(0)
    last = ((inside > 0) * (offsets + 1)).amax(0) - 1
    return block * DRAW_BLOCK + torch.minimum(passed, last)


class _StepHead:
    """A decode step's next-token logits, vocabulary-major (V, B) and divided by the temperature, for `_draw`.
    Where the head can run apart from the backbone (`splits_head`), the backbone's last states go through the head
    as weight @ states^T, scaled by 1/temperature first: the head's matmul in the layout that runs fastest with the
    vocabulary as its long side (about 1.4x `F.linear`'s rows-major product at 128 rows, 2-core AMD EPYC), written
    on the CPU into one buffer reused by every step (a fresh 25 MB block per step is paid in page faults), and no
    position but the last pays for the vocabulary (the prefill's other positions included). Elsewhere the model's
    logits at the last position, transposed."""

    def __init__(self, model: PreTrainedModel, temperature: float):
        from rakd.rollout.head import splits_head

        self.model, self.split = model, splits_head(model)
        self.scale = 1.0 / temperature if temperature > 0 else None
        self.buffer = None
        # transformers' causal LMs take `logits_to_keep`; a model of its own code (trust_remote_code) may not
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def last(self, **inputs) -> torch.Tensor:
        """The forward pass: the last position's states (B, H) when the head is split, else its logits (B, V).
        Either repeats across a group's rows (`repeat_interleave`) before `columns`. (FSDP shards the model whole:
        there the backbone is not called alone.)"""
        if self.split:
            return self.model.base_model(**inputs).last_hidden_state[:, -1]
        return self.model(**inputs, **self.keep).logits[:, -1]

    def columns(self, last: torch.Tensor) -> torch.Tensor:
        if not self.split:
            columns = last.t().float()
            return columns.mul_(self.scale) if self.scale is not None else columns
        head = self.model.get_output_embeddings()
        weight = head.weight
        states = last * self.scale if self.scale is not None else last
        if weight.device.type == "cpu" and states.dtype == weight.dtype and not torch.is_autocast_enabled("cpu"):
            size = weight.shape[0] * states.shape[0]
            if self.buffer is None or self.buffer.numel() < size:
                self.buffer = torch.empty(size, dtype=weight.dtype)
            columns = torch.mm(weight, states.t(), out=self.buffer[:size].view(weight.shape[0], states.shape[0]))
        else:
            columns = torch.matmul(weight, states.t())
        if head.bias is not None:
            columns += head.bias[:, None] * (self.scale if self.scale is not None else 1.0)
        return columns.float()


@torch.no_grad()
def _sample_loop(model, ids, mask, *, max_new_tokens, temperature, top_p, eos_id, pad_id, generator, group_size=1):
    """The KV-cache decode loop. `ids`/`mask` hold each distinct prompt once when `group_size` > 1: the prompts
    are prefilled once and their cache expanded G times. Every `COMPACT_EVERY` tokens (the loop's only host
    synchronisation) rows that have emitted EOS leave the batch and the cache, so the rest decode a smaller one.
    The cache has room for every token up front (`_GrowingLayer`: a step writes its column in place); the head
    runs at each step's last position alone (`_StepHead`)."""
    head = _StepHead(model, temperature)
    cache, last, mask, positions = _prefill(model, ids, mask, group_size, head, capacity=ids.shape[1] + max_new_tokens)
    rows = last.shape[0]
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=ids.device)
    active = torch.arange(rows, device=ids.device)  # the output row of each batch row still decoding
    finished = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    for t in range(max_new_tokens):
        u = torch.rand((len(active), 1), generator=generator, device=ids.device) if temperature > 0 else None
        token = torch.where(finished, torch.full_like(active, pad_id), _draw(head.columns(last), top_p, u))
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
        last = head.last(
            input_ids=token[:, None],
            attention_mask=attention_mask_4d(model, mask, 1),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
    return _trim(tokens, eos_id)


def shared_prefix(ids: torch.Tensor, mask: torch.Tensor) -> int:
    """How many tokens every left-padded prompt of the batch begins with, short of each prompt's last token (every
    row keeps one token of its own, whose logits start its sampling)."""
    lengths = mask.long().sum(-1)
    if ids.shape[0] < 2 or int(lengths.min()) < 2:
        return 0
    shortest = int(lengths.min())
    starts = ids.shape[1] - lengths
    heads = ids.gather(1, starts[:, None] + torch.arange(shortest, device=ids.device)[None])
    same = (heads == heads[:1]).all(0).long().cumprod(0)
    return min(int(same.sum()), shortest - 1)


def _prefill(model, ids, mask, group_size, head: _StepHead, capacity: int | None = None):
    """One forward over the distinct prompts into a DynamicCache, expanded G times: (cache, the last position's
    `head.last` output, the mask and each row's last position, all repeated G times); with `capacity`, the cache's
    layers have room for that many columns (`_GrowingLayer`). A prefix every prompt shares (`shared_prefix`) is
    computed once and its cache copied to every row; each row's own tokens follow it, the row's pads between the
    two (masked, and skipped by the positions, so every token sits where it would in the row alone)."""
    cache = DynamicCache()
    if capacity is not None:
        cache.layer_class_to_replicate = partial(_GrowingLayer, capacity)
    common = shared_prefix(ids, mask)
    if common >= MIN_SHARED_PREFIX:
        width, rows = ids.shape[1], ids.shape[0]
        start = width - int(mask[0].long().sum())
        prefix = ids[:1, start : start + common]
        ones = torch.ones_like(prefix)
        head.last(
            input_ids=prefix,
            attention_mask=attention_mask_4d(model, ones, common),
            position_ids=position_ids(ones),
            past_key_values=cache,
            use_cache=True,
        )
        cache.batch_repeat_interleave(rows)
        own = mask[:, : width - common]  # each row's pads, then its tokens after the prefix
        ids = ids[:, common:]  # what sits under a row's pads is masked: never attended to, its outputs unread
        mask = torch.cat([ones.expand(rows, common), own], dim=-1)
    positions = position_ids(mask)[:, -ids.shape[1] :]
    last = head.last(
        input_ids=ids,
        attention_mask=attention_mask_4d(model, mask, ids.shape[1]),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    )
    positions = positions[:, -1:]
    if group_size > 1:
        cache.batch_repeat_interleave(group_size)
        last, mask, positions = (t.repeat_interleave(group_size, dim=0) for t in (last, mask, positions))
    return cache, last, mask, positions


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with room for `capacity` columns: a decode step
    writes its column in place where DynamicLayer concatenates (a copy of the layer's whole cache at every token).
    Values are kept in the keys' dtype, as the concatenation promotes them. Rows leave (`batch_select_indices`) or
    repeat (`batch_repeat_interleave`) by one copy of the buffers."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self.key_buffer = self.value_buffer = None

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            self._allocate(key_states, max(self.capacity, end))
        self.key_buffer[:, :, self.length : end].copy_(key_states)
        self.value_buffer[:, :, self.length : end].copy_(value_states)
        self.length = end
        return self._views()

    def _allocate(self, like: torch.Tensor, columns: int) -> None:
        rows, heads, _, dim = like.shape
        keys = torch.empty((rows, heads, columns, dim), dtype=self.dtype, device=self.device)
        values = torch.empty_like(keys)
        if self.key_buffer is not None:
            keys[:, :, : self.length].copy_(self.key_buffer[:, :, : self.length])
            values[:, :, : self.length].copy_(self.value_buffer[:, :, : self.length])
        self.key_buffer, self.value_buffer = keys, values

    def _views(self):
        self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]
        return self.keys, self.values

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self.length + max_length
        if self.key_buffer is not None and max_length < self.length:
            self.length = max_length
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.key_buffer is not None:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.key_buffer is not None:
            self.key_buffer = self.key_buffer.index_select(0, indices)
            self.value_buffer = self.value_buffer.index_select(0, indices)
            self._views()


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
    head = _StepHead(model, temperature)
    dynamic, last, mask, positions = _prefill(model, ids, mask, group_size, head)
    rows, prompt_len, device = last.shape[0], ids.shape[1], ids.device
    cache = _static_cache(model, prompt_len + max_new_tokens, like=dynamic)
    del dynamic
    allowed = torch.zeros((rows, 1, 1, prompt_len + max_new_tokens), dtype=torch.bool, device=device)
    allowed[:, 0, 0, :prompt_len] = mask.bool()
    uniforms = torch.rand((max_new_tokens, rows, 1), generator=generator, device=device) if temperature > 0 else None
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    tokens[:, 0] = _draw(head.columns(last), top_p, uniforms[0] if uniforms is not None else None)
    finished = tokens[:, 0] == eos_id
    token = tokens[:, :1].clone()
    step = torch.zeros(1, dtype=torch.long, device=device)  # the column of `tokens` last written
    column = torch.full((1,), prompt_len, dtype=torch.long, device=device)  # the cache column `token` goes to

    def decode():
        allowed.index_fill_(-1, column, True)
        positions.add_(1)
        last = head.last(
            input_ids=token,
            attention_mask=mask_for_model(model, allowed),
            position_ids=positions,
            past_key_values=cache,
            cache_position=column,
            use_cache=True,
        )
        column.add_(1)
        step.add_(1)
        u = uniforms.index_select(0, step).squeeze(0) if uniforms is not None else None
        new = torch.where(finished, pad_id, _draw(head.columns(last), top_p, u))
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
    return assemble(parts, tokenizer)
