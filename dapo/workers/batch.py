"""The typed training batch and how it is cut into mini- and micro-batches.

Rows are responses; a row's tokens are its left-padded prompt followed by its right-padded response, so
every response starts at column `prompt_width` and the logits that predict response token t sit at column
`prompt_width - 1 + t`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TrainBatch:
    """B responses (P groups of G) ready for the policy/critic workers. On the CPU, where the trainer builds it;
    the workers move each micro-batch to the model's device (`to`) for its passes.

    Shapes: Tp = prompt width (left-padded), T = response width (right-padded).
    """

    input_ids: Tensor
    """(B, Tp + T) long: prompt then response, pad elsewhere"""
    attention_mask: Tensor
    """(B, Tp + T) bool: True on real prompt and response tokens"""
    response_mask: Tensor
    """(B, T) float: 1 on response tokens that count in the loss (overlong filtering already applied); the
    tokens generated, truncated responses' included, are `generated_mask`"""
    prompt_width: int
    """Tp: column where every response starts"""
    group_index: Tensor
    """(B,) long: which group (prompt) each row belongs to; rows of a group are contiguous"""
    advantages: Tensor | None = None
    """(B, T) float"""
    old_logprobs: Tensor | None = None
    """(B, T) float: log π_old of the response tokens (None = exactly on-policy, use the current ones)"""
    ref_logprobs: Tensor | None = None
    """(B, T) float: log π_ref (only when a KL term is on)"""
    rollout_logprobs: Tensor | None = None
    """(B, T) float: log π_rollout, what the engine reported while sampling (for the mismatch metrics and the
    rollout correction); meaningful on the rows of `rollout_rows`"""
    rollout_rows: Tensor | None = None
    """(B,) bool: rows with rollout log-probs (a group carried over from an earlier step has none)"""
    old_values: Tensor | None = None
    """(B, T) float: critic values when the rollout was scored (PPO)"""
    returns: Tensor | None = None
    """(B, T) float: value targets (PPO)"""

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def generated_mask(self) -> Tensor:
        """(B, T) float: 1 on every generated token, truncated responses' included (what log-probs, values,
        GAE and the length statistics cover; the loss covers `response_mask`)."""
        return self.attention_mask[:, self.prompt_width :].float()

    def replace(self, **changes) -> TrainBatch:
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> TrainBatch:
        """Every tensor on `device` (the same batch when they already are)."""
        moved = {
            f.name: value.to(device)
            for f in dataclasses.fields(self)
            if isinstance(value := getattr(self, f.name), Tensor) and value.device != torch.device(device)
        }
        return dataclasses.replace(self, **moved) if moved else self

    def select(self, rows: Tensor) -> TrainBatch:
        """The sub-batch of the given row indices, with all-padding columns trimmed (they cost compute)."""
        picked = {
            f.name: (value[rows] if isinstance(value, Tensor) else value)
            for f in dataclasses.fields(self)
            if (value := getattr(self, f.name)) is not None
        }
        sub = TrainBatch(**picked)
        return sub._trimmed()

    def _trimmed(self) -> TrainBatch:
        real = self.attention_mask.any(dim=0)
        prompt_real = real[: self.prompt_width]
        first = int(prompt_real.float().argmax()) if prompt_real.any() else self.prompt_width - 1
        first = min(first, self.prompt_width - 1)  # keep at least one prompt column: it predicts token 0
        response_real = real[self.prompt_width :]
        width = int(response_real.nonzero().max()) + 1 if response_real.any() else 1
        changes = {
            "input_ids": self.input_ids[:, first : self.prompt_width + width],
            "attention_mask": self.attention_mask[:, first : self.prompt_width + width],
            "prompt_width": self.prompt_width - first,
        }
        for name in (
            "response_mask", "advantages", "old_logprobs", "ref_logprobs", "rollout_logprobs", "old_values", "returns",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                changes[name] = value[:, :width]
        return self.replace(**changes)


def response_columns(per_position: Tensor, prompt_width: int, width: int) -> Tensor:
    """The columns of a (b, Tp + T, ...) per-position output (logits, hidden states, values) that predict the
    `width` response tokens: position `prompt_width - 1 + t` predicts response token t."""
    return per_position[:, prompt_width - 1 : prompt_width - 1 + width]


def mini_batches(batch: TrainBatch, groups_per_mini_batch: int, generator: torch.Generator | None) -> Iterator[Tensor]:
    """Row indices of each mini-batch: whole groups, `groups_per_mini_batch` at a time (shuffled if a generator)."""
    num_groups = int(batch.group_index.max()) + 1
    order = torch.randperm(num_groups, generator=generator) if generator is not None else torch.arange(num_groups)
    for start in range(0, num_groups, groups_per_mini_batch):
        chosen = order[start : start + groups_per_mini_batch]
        yield torch.nonzero(torch.isin(batch.group_index, chosen)).squeeze(-1)


def epochs_of_mini_batches(
    batch: TrainBatch, groups_per_mini_batch: int, epochs: int, shuffle_seed: int | None
) -> Iterator[Tensor]:
    """The row indices of every optimiser step of an update: `epochs` passes over the batch in mini-batches of
    whole groups (each pass in a new order drawn from `shuffle_seed`, or in group order without one)."""
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    for _ in range(epochs):
        yield from mini_batches(batch, groups_per_mini_batch, generator)


def micro_batches(lengths: Sequence[int], rows: Tensor, max_tokens: int) -> list[Tensor]:
    """Split `rows` into consecutive micro-batches whose padded size (rows × longest) stays within max_tokens.

    `lengths[i]` is the real length (prompt + response tokens) of row i. Rows are sorted by length first so
    that padding inside a micro-batch is small (verl's dynamic batch size does the same with a token budget).
    """
    ordered = sorted(rows.tolist(), key=lambda r: lengths[r])
    parts: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for row in ordered:
        new_longest = max(longest, lengths[row])
        if current and new_longest * (len(current) + 1) > max_tokens:
            parts.append(current)
            current, new_longest = [], lengths[row]
        current.append(row)
        longest = new_longest
    if current:
        parts.append(current)
    return [torch.tensor(p, dtype=torch.long) for p in parts]


def grouped_micro_batches(batch: TrainBatch, rows: Tensor, max_tokens: int) -> list[Tensor]:
    """Split `rows` into micro-batches for the shared-prefix forward: rows of a prompt stay together (so the
    prompt is computed once per micro-batch that holds any of them), and a micro-batch's packed size (each
    distinct prompt once plus every response) stays within max_tokens. Rows are ordered by group, then by
    response length (a group too large for one micro-batch is split between its shorter and longer rows)."""
    prompt_len = batch.attention_mask[:, : batch.prompt_width].sum(dim=1).tolist()
    response_len = batch.attention_mask[:, batch.prompt_width :].sum(dim=1).tolist()
    group = batch.group_index.tolist()
    ordered = sorted(rows.tolist(), key=lambda r: (group[r], response_len[r]))
    parts: list[list[int]] = []
    current: list[int] = []
    size = 0
    for row in ordered:
        new_prompt = not current or group[current[-1]] != group[row]
        cost = response_len[row] + (prompt_len[row] if new_prompt else 0)
        if current and size + cost > max_tokens:
            parts.append(current)
            current, size, cost = [], 0, response_len[row] + prompt_len[row]
        current.append(row)
        size += cost
    if current:
        parts.append(current)
    return [torch.tensor(p, dtype=torch.long) for p in parts]


def prompt_sharing(batch: TrainBatch) -> tuple[list[Tensor], Tensor, Tensor]:
    """The batch as the shared-prefix forward takes it: (distinct prompts, unpadded; which prompt each row
    continues (B,); response lengths (B,)). Rows of one group must carry the same prompt: checked, since
    sharing would otherwise silently train a row on another row's prompt."""
    Tp = batch.prompt_width
    groups, row_prompt = torch.unique(batch.group_index, return_inverse=True)
    first_row = torch.full((len(groups),), batch.num_rows, dtype=torch.long)
    first_row = first_row.scatter_reduce(0, row_prompt, torch.arange(batch.num_rows), reduce="amin")
    prompt_mask = batch.attention_mask[:, :Tp]
    prompt_ids = torch.where(prompt_mask, batch.input_ids[:, :Tp], -1)
    differs = (prompt_ids != prompt_ids[first_row[row_prompt]]).any(dim=1)
    if bool(differs.any()):
        row = int(differs.nonzero()[0])
        raise ValueError(
            f"row {row} of group {int(batch.group_index[row])} has a different prompt from the group's first row "
            f"{int(first_row[row_prompt[row]])}: rows of a group must share their prompt"
        )
    prompts = [batch.input_ids[r, :Tp][prompt_mask[r]] for r in first_row.tolist()]
    return prompts, row_prompt, batch.attention_mask[:, Tp:].sum(dim=1)


def batch_from_prompts(
    prompts: Sequence[Tensor], row_prompt: Tensor, responses: Tensor, response_lengths: Tensor, pad_id: int = 0
) -> TrainBatch:
    """The padded TrainBatch of rows given as the shared-prefix forward takes them (distinct prompts, which
    prompt each row continues, right-padded responses and their lengths); every response token in the loss."""
    Tp, T = max(len(p) for p in prompts), responses.shape[1]
    rows = len(row_prompt)
    ids = torch.full((rows, Tp + T), pad_id, dtype=torch.long)
    mask = torch.zeros(rows, Tp + T, dtype=torch.bool)
    for r, (p, n) in enumerate(zip(row_prompt.tolist(), response_lengths.tolist(), strict=True)):
        prompt = prompts[p]
        ids[r, Tp - len(prompt) : Tp], mask[r, Tp - len(prompt) : Tp] = prompt, True
        ids[r, Tp : Tp + n], mask[r, Tp : Tp + n] = responses[r, :n], True
    return TrainBatch(ids, mask, mask[:, Tp:].float(), Tp, row_prompt.clone())


def forward_tokens(batch: TrainBatch, rows: Tensor, shared_prompts: bool) -> int:
    """Tokens that go through the model when `rows` are computed (the MFU numerator's count): every real
    token of every row, or with shared prompts each distinct prompt once and all but the last token of
    every response."""
    mask = batch.attention_mask[rows]
    if not shared_prompts:
        return int(mask.sum())
    Tp = batch.prompt_width
    groups = batch.group_index[rows]
    first_of_group = torch.ones_like(groups, dtype=torch.bool)
    first_of_group[1:] = groups[1:] != groups[:-1]  # rows of a group are contiguous
    prompt_tokens = int(mask[first_of_group, :Tp].sum())
    return prompt_tokens + int((mask[:, Tp:].sum(dim=1) - 1).clamp(min=0).sum())


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding: 0 at the first real token of every row."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
