"""randomness.py: RNG state round trip; keyed draws that depend on (seed, step, global position) only."""
import random

import numpy as np
import torch

import randomness


def test_rng_state_round_trip():
    randomness.seed_everything(3)
    state = randomness.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    randomness.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_key_seed_is_a_pure_63_bit_function_of_the_key():
    seeds = [randomness.key_seed(0, step, pos) for step in range(3) for pos in range(3)]
    assert seeds == [randomness.key_seed(0, step, pos) for step in range(3) for pos in range(3)]
    assert len(set(seeds)) == 9 and all(0 <= s < 2**63 for s in seeds)
    a, b = randomness.key_generator(5, 1), randomness.key_generator(5, 1)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


class Draws(torch.utils.data.Dataset):
    """dataset[i] = (i, one draw of torch's global RNG): what a random crop start would be."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return index, torch.randint(0, 10**6, ()).item()


def test_two_processes_draw_what_one_process_draws_for_the_same_global_positions():
    batches = [[3, 1, 4, 0], [2, 7, 5, 6]]
    one = list(randomness.KeyedBatches(batches, seed=9, first_step=10))
    assert one[0][1] == (1, (9, 10, 1)) and one[1][3] == (6, (9, 11, 3))  # (index, (seed, step, position))
    ranks = [list(randomness.KeyedBatches([b[r::2] for b in batches], 9, 10, rank=r, world=2)) for r in range(2)]
    for step in range(2):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(one[step])
        assert ranks[1][step] == one[step][1::2]
    items = randomness.KeyedItems(Draws())
    torch.manual_seed(0)
    first = [items[pair] for pair in one[0]]
    torch.manual_seed(1)  # another global RNG state (another worker): the same draws
    assert [items[pair] for pair in reversed(one[0])] == first[::-1]
    assert len({draw for _, draw in first}) == 4
    seeded = torch.Generator().manual_seed(randomness.key_seed(9, 10, 1))  # read under key_seed(*key)
    assert first[1] == (1, torch.randint(0, 10**6, (), generator=seeded).item())
    assert torch.equal(torch.tensor([items[one[0][0]][1]]), torch.tensor([first[0][1]]))
