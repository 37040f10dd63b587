"""Block manager and scheduler bookkeeping (no model: steps are answered from the inputs)."""
from __future__ import annotations

import numpy as np
import pytest

from llm_serving.block_manager import BlockManager
from llm_serving.messages import SamplingParams
from llm_serving.scheduler import Scheduler, SchedulerLimits
from llm_serving.sequence import Sequence, Status
from msllama.runner import Ladder, StepOutput

BS = 4
LADDER = Ladder(decode_batches=(1, 2, 4, 8), decode_blocks=(4, 8, 16), prefill_tokens=(8, 16, 32),
                prefill_context_factors=(1, 2, 4), prefill_min_rows=8)


def seq(i: int, prompt: list[int], max_new: int = 4) -> Sequence:
    return Sequence(i, f"r{i}", list(prompt), len(prompt), SamplingParams(max_new_tokens=max_new))


def make(num_blocks: int = 64, max_running: int = 8, prefix: bool = True, save_every: int = 0,
         max_len: int = 64, ladder: Ladder = LADDER):
    blocks = BlockManager(num_blocks, BS, prefix)
    limits = SchedulerLimits(max_running=max_running, max_prefill_seqs=8, max_len=max_len, eos_token_id=2,
                             save_logits_every=save_every)
    return Scheduler(limits, ladder, blocks), blocks


def answer(sched: Scheduler, batch, token: int = 7, vocab: int = 8) -> list:
    """Run a batch through the scheduler's own input builder and answer every sample with `token`."""
    step = sched.build_input(batch)
    k, r = len(step.sample_rows), len(step.logits_rows)
    logits = np.tile(np.arange(r, dtype=np.float32)[:, None], (1, vocab))
    out = StepOutput(np.full(k, token, np.int32), np.zeros(k, np.float32), logits)
    return sched.update(batch, out)[0], step


def run_to_completion(sched: Scheduler, max_steps: int = 1000) -> list:
    done = []
    for _ in range(max_steps):
        batch = sched.schedule()
        if batch is None:
            return done
        sampled, _ = answer(sched, batch)
        done += [s for s in sampled if s.finish_reason]
    raise AssertionError("did not finish")


def test_prefill_packs_several_prompts_and_decode_batches_them():
    sched, blocks = make()
    for i in range(3):
        sched.add(seq(i, [1, 10 + i, 11, 12, 13]))
    batch = sched.schedule()
    assert batch.is_prefill and [x.num_new for x in batch.items] == [5, 5, 5]
    _, step = answer(sched, batch)
    assert step.token_ids.tolist() == [1, 10, 11, 12, 13, 1, 11, 11, 12, 13, 1, 12, 11, 12, 13]
    assert step.sample_rows.tolist() == [4, 9, 14]
    batch = sched.schedule()
    assert not batch.is_prefill and len(batch.items) == 3
    _, step = answer(sched, batch)
    assert step.context_lens.tolist() == [6, 6, 6] and step.token_ids.tolist() == [7, 7, 7]
    # positions 4 and 5 of the first sequence: blocks [b0 b0 b0 b0][b1 ...]
    assert step.block_tables.shape[1] == 2


def test_a_burst_of_prompts_alternates_prefill_with_decode_of_the_running_ones():
    sched, _ = make()
    sched.add(seq(0, [1, 5, 6], max_new=20))
    answer(sched, sched.schedule())                  # sequence 0 now decodes
    for i in range(1, 5):                            # four distinct 20-token prompts, 32-token budget
        sched.add(seq(i, [1] + [10 + i] * 19, max_new=20))
    kinds = []
    for _ in range(8):
        batch = sched.schedule()
        kinds.append("P" if batch.is_prefill else "D")
        answer(sched, batch)
    assert "".join(kinds) == "DPDPDPDP"               # a decode step first: the last step was a prefill


def test_prefill_steps_follow_each_other_while_nothing_decodes():
    sched, _ = make()
    sched.add(seq(0, [1] + [9] * 39, max_new=20))   # 40 tokens: chunks of 32 and 8
    first = sched.schedule()
    answer(sched, first)
    second = sched.schedule()
    assert first.is_prefill and second.is_prefill and [first.items[0].num_new, second.items[0].num_new] == [32, 8]


def test_accounting_returns_to_all_free_and_lengths_are_exact():
    sched, blocks = make(num_blocks=40)
    rng = np.random.default_rng(0)
    seqs = [seq(i, [1] + rng.integers(3, 100, size=int(rng.integers(1, 20))).tolist(), int(rng.integers(1, 12)))
            for i in range(30)]
    for s in seqs:
        sched.add(s)
    done = run_to_completion(sched)
    assert len(done) == 30
    assert all(s.num_generated == s.params.max_new_tokens and s.status is Status.FINISHED for s in seqs)
    assert blocks.num_free == blocks.total and sum(blocks.ref) == 0


def test_preemption_by_recompute_when_blocks_run_out():
    sched, blocks = make(num_blocks=9, max_running=4)   # 8 usable blocks of 4 tokens
    for i in range(4):
        sched.add(seq(i, [1, 2, 3], max_new=12))
    done = run_to_completion(sched)
    assert len(done) == 4 and sched.num_preemptions > 0
    assert all(d.seq.num_generated == 12 for d in done)
    assert blocks.num_free == blocks.total


def test_prompt_longer_than_the_budget_is_chunked():
    sched, _ = make()
    s = seq(0, list(range(3, 43)), max_new=2)            # 40 tokens, budget 32
    sched.add(s)
    first = sched.schedule()
    assert first.is_prefill and first.items[0].num_new == 32 and not first.items[0].sample
    answer(sched, first)
    second = sched.schedule()
    assert second.is_prefill and second.items[0].num_new == 8 and second.items[0].sample
    sampled, step = answer(sched, second)
    assert step.context_lens.tolist() == [40] and s.num_generated == 1


def test_prefix_cache_serves_shared_full_blocks_once():
    sched, blocks = make()
    system = list(range(3, 15))                          # 3 full blocks shared
    a = seq(0, [1] + system + [50, 51], max_new=2)
    sched.add(a)
    run_to_completion(sched)
    b = seq(1, [1] + system + [60], max_new=2)
    sched.add(b)
    batch = sched.schedule()
    assert batch.items[0].num_new == len(b.token_ids) - 12   # 12 tokens (3 blocks) from the cache
    assert sched.prefix_hits == 12
    run_to_completion(sched)
    assert blocks.num_free == blocks.total


def test_prefix_cache_off_computes_everything():
    sched, _ = make(prefix=False)
    for i in range(2):
        sched.add(seq(i, list(range(3, 20)), max_new=1))
        batch = sched.schedule()
        assert batch.items[0].num_new == 17
        answer(sched, batch)


def test_running_sequences_are_bounded_by_the_decode_batch():
    sched, _ = make(max_running=2)
    for i in range(5):
        sched.add(seq(i, [1, 5, 6], max_new=3))
    batch = sched.schedule()
    assert len(batch.items) == 2 and len(sched.waiting) == 3


def test_abort_frees_blocks_wherever_the_sequence_is():
    sched, blocks = make()
    a, b = seq(0, [1, 2, 3, 4, 5]), seq(1, [1, 2, 3])
    sched.add(a)
    sched.add(b)
    answer(sched, sched.schedule())
    assert blocks.num_used > 0
    sched.remove(a)
    sched.remove(b)
    assert blocks.num_free == blocks.total and not sched.has_work


@pytest.mark.parametrize("prompt_len,max_new", [(5, 200), (150, 60), (99, 3)])
def test_logits_rows_at_every_hundredth_position_once(prompt_len, max_new):
    from msllama.logits_files import saved_positions
    sched, _ = make(num_blocks=200, save_every=100, max_len=512,
                    ladder=Ladder(prefill_tokens=(8, 16, 32), prefill_context_factors=(1, 16)))
    s = seq(0, [1] + list(range(3, 2 + prompt_len)), max_new=max_new)
    sched.add(s)
    seen = []
    while (batch := sched.schedule()) is not None:
        seen += [p for item in batch.items for p in item.logits_positions]
        answer(sched, batch)
    assert seen == list(saved_positions(prompt_len, max_new))


def test_a_sequence_no_compiled_shape_can_hold_is_rejected_not_stalled():
    sched, blocks = make(max_len=512)                    # ladder holds 32 * 4 = 128 context keys
    s = seq(0, list(range(3, 203)), max_new=1)
    sched.add(s)
    batches = 0
    while (batch := sched.schedule()) is not None:
        batches += 1
        answer(sched, batch)
    assert sched.rejected == [s] and s.status is Status.FINISHED and batches == 4
    assert blocks.num_free == blocks.total and not sched.has_work


MIXED = Ladder(decode_batches=(1, 2, 4, 8), decode_blocks=(4, 8, 16), prefill_tokens=(8, 16, 32),
               prefill_min_rows=8, paged_prefill=True, mixed_rows=16)


def test_mixed_steps_carry_the_decode_batch_and_fill_the_budget_with_prompts():
    sched, blocks = make(ladder=MIXED)
    sched.add(seq(0, [1, 5, 6], max_new=20))
    answer(sched, sched.schedule())                  # sequence 0 now decodes
    for i in range(1, 5):                            # four distinct 20-token prompts, 32-token budget
        sched.add(seq(i, [1] + [10 + i] * 19, max_new=20))
    batch = sched.schedule()
    assert batch.kind == "mixed" and [x.num_new for x in batch.items] == [1, 20]
    _, step = answer(sched, batch)
    assert step.seq_lens.tolist() == [1, 20] and step.sample_rows.tolist() == [0, 20]
    kinds = [batch.kind]
    for _ in range(4):
        batch = sched.schedule()
        kinds.append(batch.kind)
        answer(sched, batch)
    # one 20-token prompt per step fits beside the growing decode batch, then plain decode
    assert kinds == ["mixed"] * 4 + ["decode"]
    sched.add(seq(5, [1] + [30] * 39, max_new=4))   # alone among the prompts: chunked to the budget
    batch = sched.schedule()
    assert batch.kind == "mixed" and [x.num_new for x in batch.items] == [1] * 5 + [27]
    answer(sched, batch)
    batch = sched.schedule()
    assert [x.num_new for x in batch.items] == [1] * 5 + [13] and batch.items[-1].sample
    answer(sched, batch)
    done = run_to_completion(sched)
    assert len(done) == 6 and all(s.finish_reason == "length" for s in done)
    assert blocks.num_free == blocks.total and sum(blocks.ref) == 0


def test_mixed_steps_never_chunk_a_prompt_to_nothing_and_fall_back_to_decode():
    sched, _ = make(ladder=MIXED, max_running=2)
    sched.add(seq(0, [1, 5, 6], max_new=20))
    sched.add(seq(1, [1, 7, 8], max_new=20))
    answer(sched, sched.schedule())                  # both decode now; the engine is full
    sched.add(seq(2, [1, 9, 9], max_new=4))
    batch = sched.schedule()
    assert batch.kind == "decode" and len(batch.items) == 2   # no room to admit: a plain decode step


def test_mixed_ladder_needs_the_paged_prefill_and_has_two_row_buckets():
    with pytest.raises(ValueError, match="'mixed_rows'"):
        Ladder(mixed_rows=16)
    assert ("prefill", (32, 32, 16)) in MIXED.shapes() and ("prefill", (32, 32, 8)) in MIXED.shapes()
    assert MIXED.prefill_shape(20, 10_000, 9) == (32, 32, 16)   # the context does not bound a paged step
    assert MIXED.prefill_shape(8, 10_000, 8) == (8, 8, 8)
    assert MIXED.prefill_shape(32, 0, 17) is None
