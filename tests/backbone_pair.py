"""Two backbones run on one batch of random ids with a padded row: the reference's and the candidate's
last hidden states, the ids and the mask (tests compare them on the valid tokens)."""

from __future__ import annotations

import torch


def hidden_states_of(reference, candidate, vocab: tuple[int, int], shape: tuple[int, int], padded_row: int,
                     valid: int) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(*vocab, shape)
    mask = torch.ones_like(ids)
    mask[padded_row, valid:] = 0
    with torch.inference_mode():
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        got = candidate(input_ids=ids, attention_mask=mask).last_hidden_state
    return want, got, ids, mask
