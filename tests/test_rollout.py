import pytest
import torch

from rakd.models.zoo import build_model, preset_config
from rakd.rollout import (
    Rollouts,
    completion_logits,
    completion_mask,
    encode_prompts,
    forest_logprobs,
    forward_completion,
    no_cudnn_attention,
    packs_forests,
    prefix_forests,
    resolve_backend,
    sample,
    score_completions,
    select_rows,
    token_logprobs,
)
from rakd.rollout.forests import _prefix_trees
from rakd.rollout.samplers import _sample_graph, _sample_loop

QUESTIONS = [
    "1+1=?",
    "12*13-4+7=?",
    "Ana has 3 coins. Then Ana gets 4 more. How many coins does Ana have now?",
    "9-2=?",
]


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(preset_config("test-micro", tokenizer), seed=3).eval()


def test_prompts_are_left_padded_without_changing_the_callers_tokenizer(tokenizer):
    tokenizer.padding_side = "right"  # what a caller (an SFT collator, say) may rely on
    try:
        ids, mask = encode_prompts(tokenizer, QUESTIONS)
        assert mask[:, -1].all() and not mask[0, 0]
        assert tokenizer.padding_side == "right"  # was silently switched to "left" (a latent bug)
    finally:
        tokenizer.padding_side = "left"


@pytest.mark.parametrize("backend", ["generate", "loop", "static", "graph"])
def test_batched_greedy_equals_one_by_one_with_mixed_lengths(model, tokenizer, backend):
    batch = sample(model, tokenizer, QUESTIONS, max_new_tokens=12, temperature=0.0, backend=backend)
    for i, question in enumerate(QUESTIONS):
        alone = sample(model, tokenizer, [question], max_new_tokens=12, temperature=0.0, backend=backend)
        n = int(alone.completion_mask.sum())
        assert batch.completion_ids[i, :n].tolist() == alone.completion_ids[0, :n].tolist()
        assert batch.texts[i] == alone.texts[0]


def test_backends_agree_when_greedy(model, tokenizer):
    a, b, c, d = (
        sample(model, tokenizer, QUESTIONS, max_new_tokens=10, temperature=0.0, backend=backend)
        for backend in ("generate", "loop", "static", "graph")
    )
    assert a.texts == b.texts == c.texts == d.texts
    assert sample(model, tokenizer, QUESTIONS, max_new_tokens=10, temperature=0.0).texts == b.texts  # auto: loop
    assert resolve_backend("auto", torch.device("cpu")) == "loop"
    assert resolve_backend("auto", torch.device("cuda")) == "graph"
    assert resolve_backend("static", torch.device("cuda")) == "static"


def test_samplers_agree_under_bf16_autocast(model, tokenizer):
    """As RL samples on CUDA (bf16 autocast), here on the CPU's: the keys leave the rotary embedding in fp32 and
    the values their projection in bf16, which transformers' own static cache could not store (`index_copy_`:
    Float and BFloat16); every sampler runs and they agree greedily."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        texts = [
            sample(model, tokenizer, QUESTIONS, max_new_tokens=10, temperature=0.0, backend=backend).texts
            for backend in ("generate", "loop", "static", "graph")
        ]
    assert texts[0] == texts[1] == texts[2] == texts[3]


@pytest.mark.parametrize("backend", ["generate", "loop", "static", "graph"])
def test_sampling_is_seeded(model, tokenizer, backend):
    kw = dict(max_new_tokens=10, temperature=1.0, backend=backend)
    a = sample(model, tokenizer, QUESTIONS * 4, seed=5, **kw)
    b = sample(model, tokenizer, QUESTIONS * 4, seed=5, **kw)
    c = sample(model, tokenizer, QUESTIONS * 4, seed=6, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_shared_prefix_is_counted_past_left_padding_and_leaves_each_row_a_token():
    from rakd.rollout.samplers import shared_prefix

    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [0, 5, 6, 7, 8, 1]])
    mask = (torch.arange(6)[None] >= torch.tensor([[2], [0], [1]])).long()
    assert shared_prefix(ids, mask) == 3  # 5 6 7 in every row
    assert shared_prefix(ids[:1], mask[:1]) == 0  # one row: nothing to share
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert shared_prefix(same, torch.ones_like(same)) == 2  # the last token stays each row's own


@pytest.mark.parametrize("backend", ["loop", "graph"])  # the two samplers of our own prefill
def test_a_prefix_every_prompt_shares_is_prefilled_once_with_the_same_samples(model, tokenizer, backend, monkeypatch):
    """A chat template's system prompt begins every prompt: computed once, the samples are those of prefilling
    every row whole, greedy and seeded, with mixed lengths (each row's pads between the prefix and its tokens)."""
    import rakd.rollout.samplers as samplers

    questions = [f"Read the question and answer it with the number alone, please. {q}" for q in QUESTIONS]
    ids, mask = encode_prompts(tokenizer, questions)
    assert samplers.shared_prefix(ids, mask) >= samplers.MIN_SHARED_PREFIX
    calls = []
    forward = type(model.base_model).forward  # the backbone: every pass runs it, with the head or without

    def counting(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.base_model), "forward", counting)
    least = samplers.MIN_SHARED_PREFIX
    for temperature in (0.0, 1.0):
        kw = dict(max_new_tokens=10, temperature=temperature, seed=5, backend=backend)
        calls.clear()
        once = sample(model, tokenizer, questions, **kw)
        assert calls[0][0] == 1 and calls[1][0] == len(questions)  # the prefix alone, then every row's own tokens
        monkeypatch.setattr(samplers, "MIN_SHARED_PREFIX", 10**6)
        whole = sample(model, tokenizer, questions, **kw)
        monkeypatch.setattr(samplers, "MIN_SHARED_PREFIX", least)
        assert torch.equal(once.completion_ids, whole.completion_ids) and once.texts == whole.texts


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_graph_sampler_draws_the_loops_tokens_from_the_same_uniforms(model, tokenizer, monkeypatch, attention):
    """`graph` decodes over a static cache from a table of uniforms drawn up front; the loop draws the same
    uniforms step by step (one per row and step: the same stream while no row leaves the batch, so EOS is set to
    a token no row emits). Sampled, top-p filtered and from shared prefills, they pick the same tokens."""
    monkeypatch.setattr(model.config, "_attn_implementation", attention)
    ids, mask = encode_prompts(tokenizer, QUESTIONS)
    for temperature, top_p, group in ((1.0, 1.0, 1), (0.7, 0.9, 1), (1.0, 1.0, 4)):
        kw = dict(max_new_tokens=19, temperature=temperature, top_p=top_p, eos_id=-1, pad_id=tokenizer.pad_token_id)
        loop, graph = (
            sampler(model, ids, mask, generator=torch.Generator().manual_seed(4), group_size=group, **kw)
            for sampler in (_sample_loop, _sample_graph)
        )
        assert loop.shape == graph.shape == (len(QUESTIONS) * group, 19)
        assert torch.equal(loop, graph)


def test_cudnn_attention_is_left_out_on_cuda_only():
    """cuDNN's SDPA builds a plan per new shape (about 10 ms of host time each on an H200), and sampling and
    scoring meet new shapes all the time; the other kernels stay, and nothing changes elsewhere."""
    cuda = torch.backends.cuda
    with no_cudnn_attention(torch.device("cuda")):
        assert not cuda.cudnn_sdp_enabled()
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled() and cuda.math_sdp_enabled()
    assert cuda.cudnn_sdp_enabled()
    with no_cudnn_attention(torch.device("cpu")):
        assert cuda.cudnn_sdp_enabled()


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 2, 9, 2], [5, 6, 7, 8]])
    assert completion_mask(ids, eos_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_scores_match_unpadded_single_sequences(model, tokenizer):
    batch = sample(model, tokenizer, QUESTIONS, max_new_tokens=8, temperature=1.0, seed=1)
    scores = score_completions(model, batch)
    for i, question in enumerate(QUESTIONS):
        prompt = tokenizer(question + "\n", return_tensors="pt")["input_ids"]
        n = int(batch.completion_mask[i].sum())
        completion = batch.completion_ids[i : i + 1, :n]
        with torch.no_grad():
            logits = model(torch.cat([prompt, completion], dim=1)).logits[:, prompt.shape[1] - 1 : -1]
        expected = token_logprobs(logits, completion)
        assert torch.allclose(scores[i, :n], expected[0], atol=1e-5)


def test_shared_prefill_leaves_the_samples_unchanged(model, tokenizer):
    """G samples of a prompt prefill it once: the same tokens as prefilling each copy, greedy and seeded."""
    group = 4
    repeated = [q for q in QUESTIONS for _ in range(group)]
    for temperature in (0.0, 1.0):
        kw = dict(max_new_tokens=10, temperature=temperature, seed=5)
        shared = sample(model, tokenizer, repeated, group_size=group, **kw)
        apart = sample(model, tokenizer, repeated, **kw)
        assert torch.equal(shared.completion_ids, apart.completion_ids)
        assert torch.equal(shared.prompt_ids, apart.prompt_ids) and shared.texts == apart.texts
        torch.testing.assert_close(score_completions(model, shared), score_completions(model, apart))
    with pytest.raises(ValueError, match="repeat each prompt"):
        sample(model, tokenizer, QUESTIONS, max_new_tokens=4, group_size=2)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_scoring_packs_each_distinct_prefix_once_with_the_same_log_probs(model, tokenizer, monkeypatch, attention):
    """Scoring packs each prompt and the prefix tree of its rows' completions into one sequence: the log-probs
    are those of one plain pass over each prompt + completion whatever the chunking, and the model sees each
    distinct prompt and each distinct completion prefix exactly once. Rows repeat whole, share a head and
    diverge, end at different lengths (one row is empty)."""
    group = 4
    batch = sample(model, tokenizer, [q for q in QUESTIONS for _ in range(group)], max_new_tokens=12, seed=2)
    ids = batch.completion_ids
    ids[1] = ids[0]  # a whole repeat
    ids[2, :5] = ids[0, :5]  # the same head, then its own tokens
    ids[5, :3] = ids[4, :3]
    ids[6] = ids[4]
    ends = torch.tensor([12, 12, 9, 7, 12, 2, 9, 0, 8, 3, 12, 6, 12, 12, 1, 5])
    batch.completion_mask = (torch.arange(12)[None] < ends[:, None]).long()
    nodes = sum(  # the distinct (prompt, completion prefix) pairs: the tokens a prefix tree holds
        len(
            {
                (tuple(batch.prompt_ids[r].tolist()), tuple(ids[r, : k + 1].tolist()))
                for r in rows
                for k in range(ends[r])
            }
        )
        for rows in torch.arange(len(ids)).split(group)
    )
    prompt_tokens = int(batch.prompt_mask[::group].sum())
    monkeypatch.setattr(model.config, "_attn_implementation", attention)
    with torch.no_grad():
        logits = forward_completion(model, batch.prompt_ids, batch.prompt_mask, ids, batch.completion_mask)
    expected = token_logprobs(logits, ids) * batch.completion_mask
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        for rows in (group, 2 * group, 64):
            seen.clear()
            torch.testing.assert_close(score_completions(model, batch, batch_size=rows), expected, atol=1e-5, rtol=0)
            forests = prefix_forests(batch, rows)
            assert [x.shape for x in seen] == [f.ids.shape for f in forests]  # the model ran on the forests only
            assert len(forests) == -(-len(QUESTIONS) // (rows // group))  # whole groups, `rows` at most
            assert len(_prefix_trees(batch)) == len(QUESTIONS)  # one tree per prompt
            for forest in forests:  # trees share sequences as long as the longest tree, never longer
                assert int(forest.sizes.max()) <= forest.ids.shape[1]
                assert forest.ids.shape[1] == max(len(t.tokens) for t in _prefix_trees(select_rows(batch, forest.rows)))
            assert sum(int(f.sizes.sum()) for f in forests) == prompt_tokens + nodes
    finally:
        hook.remove()
    (whole,) = prefix_forests(batch, 64)
    assert len(whole.sizes) < len(QUESTIONS)  # small trees packed together (the 4 prompts' trees: 3 sequences)
    for rows in (5, 64):  # unpacked, as on an accelerator: plain padded passes over length-sorted chunks
        torch.testing.assert_close(score_completions(model, batch, rows, packed=False), expected, atol=1e-5, rtol=0)
    assert packs_forests(torch.device("cpu")) and not packs_forests(torch.device("cuda"))
    longest = int((batch.prompt_mask.sum(-1) + batch.completion_mask.sum(-1)).max())
    for cap in (1, longest, 2 * longest):  # a prompt's tree that would grow past the cap continues in another
        forests = prefix_forests(batch, 64, max_tokens=cap)
        sizes = torch.cat([f.sizes for f in forests])
        assert int(sizes.max()) <= max(cap, longest)
        assert len(_prefix_trees(batch, cap)) > len(QUESTIONS) or cap > longest
        scores = torch.zeros_like(expected)
        with torch.no_grad():
            for forest in forests:
                logprobs = forest_logprobs(model, forest)
                scores[forest.rows, : logprobs.shape[1]] = logprobs
        torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="row 0 has an empty prompt"):
        empty = Rollouts(batch.prompt_ids[:1], 0 * batch.prompt_mask[:1], ids[:1], batch.completion_mask[:1], [""])
        prefix_forests(empty, 4)


def test_finished_rows_leave_the_batch_without_changing_any_row(model, tokenizer, monkeypatch):
    """Rows that have emitted EOS are dropped from the decode batch (and the cache) every few tokens; each
    row's tokens stay what a batch that keeps every row computes. A common token stands in for EOS so that
    the random model's rows end at different steps."""
    from rakd.rollout import samplers as rollout

    ids, mask = encode_prompts(tokenizer, QUESTIONS * 3)
    kw = dict(max_new_tokens=24, temperature=0.0, top_p=1.0, pad_id=tokenizer.pad_token_id, generator=None)
    probe = rollout._sample_loop(model, ids, mask, eos_id=-1, **kw)
    eos = int(torch.mode(probe[:, 2:].flatten()).values)  # the random model's most common token
    monkeypatch.setattr(rollout, "COMPACT_EVERY", 10**6)
    kept = rollout._sample_loop(model, ids, mask, eos_id=eos, **kw)
    monkeypatch.setattr(rollout, "COMPACT_EVERY", 2)
    dropped = rollout._sample_loop(model, ids, mask, eos_id=eos, **kw)
    ends = completion_mask(kept, eos).sum(-1)
    assert len(set(ends.tolist())) > 1  # rows really finished at different steps
    assert torch.equal(dropped, kept)


def test_a_completion_ends_at_its_first_eos_or_emitted_pad(model, tokenizer):
    """No masked holes inside a row: a pad the random model emits ends the completion as EOS does."""
    batch = sample(model, tokenizer, QUESTIONS * 8, max_new_tokens=24, temperature=1.0, seed=2)
    mask = batch.completion_mask
    assert (mask[:, 1:] <= mask[:, :-1]).all()  # 1s then 0s in every row
    ends_at_pad = [row for row in range(len(mask)) if 0 < mask[row].sum() < mask.shape[1]]
    for row in ends_at_pad:
        last = int(mask[row].sum()) - 1
        cut = batch.completion_ids[row, last + 1] if last + 1 < mask.shape[1] else None
        assert batch.completion_ids[row, last] == tokenizer.eos_token_id or cut == tokenizer.pad_token_id


def test_completion_logits_give_the_plain_pass_logits_and_gradients(model, tokenizer):
    """The update's forward pass packs its rows as a prefix forest: at every completion token the logits are the
    plain pass's, and the gradient of a masked per-token loss is the same (a shared prefix collects the
    gradient of every row through it)."""
    group = 3
    batch = sample(model, tokenizer, [q for q in QUESTIONS for _ in range(group)], max_new_tokens=10, seed=4)
    batch.completion_ids[1] = batch.completion_ids[0]
    batch.completion_ids[2, :6] = batch.completion_ids[0, :6]
    ends = torch.tensor([10, 10, 8, 3, 10, 1, 7, 7, 9, 2, 10, 5])
    batch.completion_mask = (torch.arange(10)[None] < ends[:, None]).long()
    weights = torch.randn(batch.completion_ids.shape, generator=torch.Generator().manual_seed(0))
    results = []
    unpacked = lambda m, *ids: completion_logits(m, batch, packed=False)  # noqa: E731 (as on an accelerator)
    for forward in (forward_completion, lambda m, *ids: completion_logits(m, batch), unpacked):
        model.zero_grad()
        logits = forward(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
        loss = (token_logprobs(logits, batch.completion_ids) * weights * batch.completion_mask).sum()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((logits.detach() * batch.completion_mask[..., None], grads))
    model.zero_grad()
    (plain, plain_grads), *others = results
    for logits, grads in others:
        torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)
        for a, b in zip(grads, plain_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_prefix_every_prompt_shares_is_computed_once_with_the_plain_pass_logprobs_and_gradients(
    model, tokenizer, monkeypatch
):
    """Distinct prompts that begin alike (a chat template's system prompt): the forest computes their common
    prefix once, apart, and every row's log-probs and the gradient of a loss on them are the plain pass's; the
    model runs on the prefix once and on the trees without it."""
    from rakd.rollout import forests, head

    shared = "Answer with the number only, after working it out: "
    batch = sample(model, tokenizer, [shared + q for q in QUESTIONS for _ in range(2)], max_new_tokens=8, seed=5)
    batch.completion_mask[3, 4:] = 0
    (forest,) = prefix_forests(batch, 8)
    prompts = [batch.prompt_ids[r][batch.prompt_mask[r].bool()].tolist() for r in range(len(batch.texts))]
    common = len(forest.prefix)
    assert common >= forests.MIN_SHARED_PREFIX and all(p[:common] == forest.prefix.tolist() for p in prompts)
    assert min(map(len, prompts)) > common  # every row keeps a token of its own prompt
    monkeypatch.setattr(forests, "MIN_SHARED_PREFIX", 10**6)
    (whole,) = prefix_forests(batch, 8)
    monkeypatch.undo()
    assert len(whole.prefix) == 0 and int(whole.sizes.sum()) == int(forest.sizes.sum()) + len(QUESTIONS) * common
    weights = torch.randn(batch.completion_ids.shape, generator=torch.Generator().manual_seed(1))
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    results = []
    try:
        for way in ("plain", "forest", "head"):
            model.zero_grad()
            seen.clear()
            if way == "head":
                logprobs = head.forest_head_logprobs(model, forest)
                logprobs = logprobs[torch.argsort(forest.rows)]
                assert seen == [torch.Size([1, common]), forest.ids.shape]
            else:
                logits = completion_logits(model, batch, packed=way == "forest")
                logprobs = token_logprobs(logits, batch.completion_ids) * batch.completion_mask
            (logprobs * weights).sum().backward()
            results.append((logprobs.detach(), [p.grad.clone() for p in model.parameters()]))
    finally:
        hook.remove()
    model.zero_grad()
    (plain, plain_grads), *others = results
    for logprobs, grads in others:
        torch.testing.assert_close(logprobs, plain, atol=1e-5, rtol=0)
        for a, b in zip(grads, plain_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_next_token_draws_from_the_softmax_and_never_a_filtered_token():
    """The sampler inverts the CDF with one uniform per row: over 40000 draws each token's frequency is its
    probability within 4 standard errors, at temperature 0.7 and under top-p, where tokens outside the nucleus
    (and a -inf logit) are never drawn; greedy is the argmax."""
    from rakd.rollout.samplers import _filter_top_p, _next_token

    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, float("-inf"), 0.0])
    rows = 40000
    generator = torch.Generator().manual_seed(0)
    for temperature, top_p in ((1.0, 1.0), (0.7, 1.0), (1.0, 0.8)):
        expected = _filter_top_p(logits / temperature, top_p).softmax(-1)
        drawn = _next_token(logits.expand(rows, -1), temperature, top_p, generator)
        frequency = torch.bincount(drawn, minlength=len(logits)).double() / rows
        stderr = (expected * (1 - expected) / rows).sqrt().double()
        assert ((frequency - expected.double()).abs() <= 4 * stderr + 1e-12).all(), (temperature, top_p, frequency)
        assert frequency[expected == 0].sum() == 0
    assert _next_token(logits.expand(3, -1), 0.0, 1.0, generator).tolist() == [0, 0, 0]


def test_the_two_level_draw_picks_from_the_softmax_across_blocks_and_never_a_zero():
    """`_draw` picks a block of `DRAW_BLOCK` entries by the blocks' sums, then the token inside it: over two whole
    blocks and a partial one, with tokens of non-zero probability at the blocks' edges, each token's frequency is
    its probability within 4 standard errors (40000 draws, temperatures 1 and 0.7) and no other token is drawn;
    u = 0 picks the first token of non-zero probability and the largest uniform the last, with zeros after it."""
    from rakd.rollout.samplers import DRAW_BLOCK, _draw

    vocab = 2 * DRAW_BLOCK + 37
    logits = torch.full((vocab,), float("-inf"))
    picks = [0, DRAW_BLOCK - 1, DRAW_BLOCK, 2 * DRAW_BLOCK, 2 * DRAW_BLOCK + 5]
    logits[picks] = torch.tensor([1.0, 0.2, -0.5, 0.7, 0.0])
    rows, generator = 40000, torch.Generator().manual_seed(0)
    for temperature in (1.0, 0.7):
        expected = (logits / temperature).softmax(-1)
        u = torch.rand((rows, 1), generator=generator)
        drawn = _draw((logits / temperature)[:, None].repeat(1, rows), 1.0, u)
        frequency = torch.bincount(drawn, minlength=vocab).double() / rows
        stderr = (expected * (1 - expected) / rows).sqrt().double()
        assert ((frequency - expected.double()).abs() <= 4 * stderr + 1e-12).all(), temperature
        assert frequency[expected == 0].sum() == 0
    ends = torch.tensor([[0.0], [1 - 2**-24]])
    assert _draw(logits[:, None].repeat(1, 2), 1.0, ends).tolist() == [0, 2 * DRAW_BLOCK + 5]


def test_the_two_level_draw_never_picks_a_zero_when_rounding_leaves_a_block_short():
    """The blocks' sums and the running sum inside a block add in different orders: the block's running sum can end
    below its sum (here in random blocks of positive entries followed by zeros), so the largest uniform's target
    lies past the block's last entry. The token drawn then still has a non-zero probability (the block's last such),
    never one of the zeros after it; u = 0 draws the first of non-zero probability."""
    from rakd.rollout.samplers import DRAW_BLOCK, _draw

    generator, short = torch.Generator().manual_seed(0), 0
    for _ in range(64):
        n = int(torch.randint(2, DRAW_BLOCK - 8, (1,), generator=generator))
        probs = torch.zeros(DRAW_BLOCK)
        probs[:n] = torch.rand(n, generator=generator) * torch.exp(torch.randn(n, generator=generator) * 4)
        columns = probs.log()[:, None].repeat(1, 2)
        scaled = columns.sub(columns.amax(0)).exp()
        short += bool(scaled.sum(0)[0] * (1 - 2**-24) > scaled.cumsum(0)[-1, 0])
        top, bottom = _draw(columns, 1.0, torch.tensor([[1 - 2**-24], [0.0]])).tolist()
        assert scaled[top, 0] > 0 and bottom == int(torch.nonzero(scaled[:, 0]).min())
    assert short > 0  # the rounding this test is about happened


def test_the_two_level_draw_inverts_the_whole_cdf():
    """On random logits (a vocabulary of 3.3 blocks, 256 rows) the token each uniform picks is the one whose
    interval of the whole CDF (computed in float64) holds u, to float32 rounding."""
    from rakd.rollout.samplers import DRAW_BLOCK, _draw

    generator = torch.Generator().manual_seed(1)
    vocab, rows = int(3.3 * DRAW_BLOCK), 256
    logits = torch.randn((rows, vocab), generator=generator) * 3
    u = torch.rand((rows, 1), generator=generator)
    drawn = _draw(logits.t().contiguous(), 1.0, u)
    probs = logits.double().softmax(-1)
    cdf = probs.cumsum(-1)
    high = cdf.gather(1, drawn[:, None])[:, 0]
    low = high - probs.gather(1, drawn[:, None])[:, 0]
    target = u[:, 0].double()
    assert ((low - 1e-5 <= target) & (target <= high + 1e-5)).all()
    assert (probs.gather(1, drawn[:, None]) > 0).all()


def test_the_step_head_gives_the_model_s_tempered_logits_vocabulary_major_in_one_buffer(model, tokenizer):
    """`_StepHead` runs the backbone and the head apart: weight @ (states / T)^T is the model's logits / T at the
    last position, every step written into one buffer on the CPU (fewer rows after finished ones leave: the same
    memory); with the head not split (the model's logits, transposed) the same numbers."""
    from rakd.rollout.batch import position_ids
    from rakd.rollout.masks import attention_mask_4d
    from rakd.rollout.samplers import _StepHead

    ids, mask = encode_prompts(tokenizer, QUESTIONS)
    width = ids.shape[1]
    kw = dict(input_ids=ids, attention_mask=attention_mask_4d(model, mask, width), position_ids=position_ids(mask))
    fewer = {name: value[:2] for name, value in kw.items()}
    with torch.no_grad():
        expected = model(**kw).logits[:, -1] / 0.7
        head = _StepHead(model, 0.7)
        assert head.split
        first = head.columns(head.last(**kw))
        torch.testing.assert_close(first.t(), expected, rtol=1e-5, atol=1e-5)
        pointer = first.data_ptr()
        second = head.columns(head.last(**fewer))
        assert second.data_ptr() == pointer
        torch.testing.assert_close(second.t(), expected[:2], rtol=1e-5, atol=1e-5)
        head.split = False
        assert head.keep == {"logits_to_keep": 1}  # the model's head at the last position alone
        torch.testing.assert_close(head.columns(head.last(**kw)).t(), expected, rtol=1e-5, atol=1e-5)
        head.keep = {}  # a model that takes no logits_to_keep: its logits at every position, the last one read
        torch.testing.assert_close(head.columns(head.last(**kw)).t(), expected, rtol=1e-5, atol=1e-5)


def test_the_decode_loop_writes_its_cache_in_place_with_the_dynamic_cache_s_tokens_and_logits(tokenizer, monkeypatch):
    """The loop sampler's cache (`_GrowingLayer`) has room for every token from the prefill on: no decode step
    concatenates (DynamicLayer's update, a copy of the layer's whole cache at every token, never runs) or grows a
    buffer (one allocation per layer); rows dropped and groups repeated on the way, on a grouped-query model (4 query
    heads sharing 2 key-value heads), the greedy tokens and every step's logits are those of transformers'
    DynamicCache."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    from transformers.cache_utils import DynamicLayer

    from rakd.models.attention import install
    from rakd.rollout import samplers
    from rakd.rollout.masks import attention_mask_4d

    install()  # as every model rakd builds or loads
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, attn_implementation="sdpa",
    )  # fmt: skip
    gqa = LlamaForCausalLM(config).eval()
    ids, mask = encode_prompts(tokenizer, QUESTIONS)
    width, new = ids.shape[1], 10

    def plain(group: int):  # DynamicCache, every row to the end, each prompt's row repeated `group` times
        rows_ids, rows_mask = ids.repeat_interleave(group, 0), mask.repeat_interleave(group, 0)
        cache, out, step_logits = DynamicCache(), [], []
        positions = (rows_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = gqa(input_ids=rows_ids, attention_mask=attention_mask_4d(gqa, rows_mask, width),
                     position_ids=positions, past_key_values=cache, use_cache=True).logits[:, -1]  # fmt: skip
        position = positions[:, -1:]
        for _ in range(new):
            step_logits.append(logits)
            out.append(logits.argmax(-1))
            rows_mask = torch.cat([rows_mask, torch.ones_like(rows_mask[:, :1])], -1)
            position = position + 1
            logits = gqa(input_ids=out[-1][:, None], attention_mask=attention_mask_4d(gqa, rows_mask, 1),
                         position_ids=position, past_key_values=cache, use_cache=True).logits[:, -1]  # fmt: skip
        return torch.stack(out, 1), step_logits

    with torch.no_grad():
        expected, expected_logits = plain(1)
        grouped, _ = plain(2)

    concatenated, allocated = [], []
    monkeypatch.setattr(DynamicLayer, "update", lambda *a, **k: concatenated.append(1))
    real_allocate = samplers._GrowingLayer._allocate
    monkeypatch.setattr(samplers._GrowingLayer, "_allocate", lambda *a: allocated.append(1) or real_allocate(*a))
    monkeypatch.setattr(samplers, "COMPACT_EVERY", 3)
    kw = dict(max_new_tokens=new, temperature=0.0, top_p=1.0, pad_id=tokenizer.pad_token_id, generator=None)
    probe = samplers._sample_loop(gqa, ids, mask, eos_id=-1, **kw)
    assert torch.equal(probe, expected)
    assert concatenated == [] and len(allocated) == config.num_hidden_layers
    eos = int(probe[0, 4])  # row 0 ends at step 5: the others go on in a smaller batch
    loop = samplers._sample_loop(gqa, ids, mask, eos_id=eos, **kw)
    for row in range(len(QUESTIONS)):
        n = int(completion_mask(loop, eos)[row].sum())
        assert loop[row, :n].tolist() == expected[row, :n].tolist()
    assert torch.equal(samplers._sample_loop(gqa, ids, mask, eos_id=-1, group_size=2, **kw), grouped)
    with torch.no_grad():  # the same steps through the in-place cache: DynamicCache's logits to float rounding
        head = samplers._StepHead(gqa, 0.0)
        cache, last, step_mask, position = samplers._prefill(gqa, ids, mask, 1, head, capacity=width + new)
        logits = head.columns(last).t()
        assert all(type(layer) is samplers._GrowingLayer for layer in cache.layers)
        for t in range(new):
            torch.testing.assert_close(logits, expected_logits[t], rtol=1e-5, atol=1e-5)
            step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], -1)
            position = position + 1
            logits = gqa(input_ids=expected[:, t : t + 1], attention_mask=attention_mask_4d(gqa, step_mask, 1),
                         position_ids=position, past_key_values=cache, use_cache=True).logits[:, -1]  # fmt: skip
