"""How a worker runs the model over a batch: the response forward (shared-prefix or the model's own), its
micro-batches, the module that DDP/FSDP2 wrap, and the passes of one rank with their gradient accumulation.

The policy and the critic both go through here, so a new precision or parallelism feature lands in this module
(and `workers/parallel.py`), not in the roles' code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dapo import algo
from dapo.models.sequence_parallel import SequenceParallel, SequenceParallelError
from dapo.models.shared_prefix import SharedPrefixForward
from dapo.workers.base import PRECISIONS
from dapo.workers.batch import (
    TrainBatch,
    batch_from_prompts,
    forward_tokens,
    grouped_micro_batches,
    micro_batches,
    position_ids,
    prompt_sharing,
    response_columns,
)
from dapo.workers.parallel import DataParallel


def _row_lengths(batch: TrainBatch) -> list[int]:
    return batch.attention_mask.sum(dim=1).tolist()


def hf_response_logits(model: nn.Module, micro: TrainBatch) -> Tensor:
    """Logits that predict each response token, (b, T, V), from the model's own forward over padded rows."""
    out = model(
        input_ids=micro.input_ids,
        attention_mask=micro.attention_mask.long(),
        position_ids=position_ids(micro.attention_mask),
        use_cache=False,
    )
    return response_columns(out.logits, micro.prompt_width, micro.response_ids.shape[1])


def shared_prefix_problem(model: nn.Module) -> str | None:
    """None if the shared-prefix forward covers `model` (a causal LM or a critic's decoder body) and
    reproduces its decoder's final hidden states on a small batch (two prompts of different lengths, rows of
    different lengths); else why not. Heads are plain linear layers on those states, so this covers logits
    and values alike."""
    try:
        forward = SharedPrefixForward(model)
    except NotImplementedError as e:
        return str(e)
    g = torch.Generator().manual_seed(0)
    weight = forward.decoder.embed_tokens.weight
    prompts = [torch.randint(0, weight.shape[0], (k,), generator=g) for k in (5, 2)]
    responses = torch.randint(0, weight.shape[0], (3, 4), generator=g)
    lengths = torch.tensor([4, 1, 3])
    group_index = torch.tensor([0, 0, 1])
    batch = batch_from_prompts(prompts, group_index, responses, lengths)
    ids, mask = batch.input_ids.to(weight.device), batch.attention_mask.to(weight.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = forward.decoder(
                input_ids=ids, attention_mask=mask.long(), position_ids=position_ids(mask), use_cache=False
            )
            want = response_columns(out.last_hidden_state, batch.prompt_width, responses.shape[1]).float()
            hidden, index = forward.response_hidden(prompts, group_index, responses, lengths)
            got = hidden[index].float()
    except Exception as e:  # an architecture variant the ops do not cover
        return repr(e)
    finally:
        model.train(was_training)
    real = mask[:, batch.prompt_width :]
    worst = float((got - want)[real].abs().max())
    tol = 1e-3 if weight.dtype == torch.float32 else 5e-2
    return None if worst <= tol else f"hidden states differ from the model's forward by {worst:.2g} (> {tol})"


class ResponseForward:
    """How a worker gets the logits of response tokens (or, for a critic's body, the final hidden states under
    its value head), and how it cuts a mini-batch for it.

    "shared_prefix" (when asked for, the model is covered and the self-check agrees): each prompt computed
    once per micro-batch for all its responses, packed tokens (`dapo.models.shared_prefix`); micro-batches
    keep a prompt's rows together. "hf": the model's own forward over left/right-padded rows; micro-batches
    sorted by length. Both give the same logits up to float rounding.
    """

    def __init__(
        self,
        model: nn.Module,
        share_prompts: bool,
        temperature: float = 1.0,
        precision: str = "fp32",
        checkpoint_blocks: bool = False,
        sequence: SequenceParallel | None = None,
    ):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = model
        self.temperature = temperature
        self.precision = precision
        self.fallback_reason = shared_prefix_problem(model) if share_prompts else "not asked for"
        if sequence is not None and self.fallback_reason is not None:
            raise SequenceParallelError(
                "ray.sequence_parallel > 1 splits the packed tokens of the shared-prefix forward, which this run "
                f"cannot use ({self.fallback_reason}): set ray.sequence_parallel=1"
            )
        self.sequence = sequence
        self.shared = SharedPrefixForward(model, checkpoint_blocks, sequence) if self.fallback_reason is None else None
        if checkpoint_blocks and self.shared is None:
            # The model's own per-block checkpointing, non-reentrant like the shared-prefix forward's; it acts only
            # in train mode under grad, so the engine sharing this module and the no-grad passes are unaffected.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def name(self) -> str:
        return "shared_prefix" if self.shared is not None else "hf"

    def micro_batches(self, batch: TrainBatch, rows: Tensor, max_tokens: int) -> list[Tensor]:
        if self.shared is not None:
            return grouped_micro_batches(batch, rows, max_tokens)
        return micro_batches(_row_lengths(batch), rows, max_tokens)

    def tokens_computed(self, batch: TrainBatch, rows: Tensor) -> int:
        """Tokens that go through the model when `rows` are computed (for the MFU estimate)."""
        return forward_tokens(batch, rows, self.shared is not None)

    def compute_context(self):
        """The autocast region of the model's forward: bf16 matmuls over float32 (master) weights for
        "bf16-mixed"; nothing for "fp32". Gradients, the optimiser state and every reduction stay float32."""
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed")

    def logits(self, micro: TrainBatch) -> Tensor:
        """(b, T, V) logits of the distribution the responses were sampled from: the model's, divided by the
        rollout temperature, float32. The training passes use `logprobs`, which never holds them; these are for
        checks against the model's own forward (tests, benchmarks)."""
        with self.compute_context():
            if self.shared is None:
                logits = hf_response_logits(self.model, micro)
            else:
                prompts, row_prompt, response_lengths = prompt_sharing(micro)
                logits = self.shared.response_logits(prompts, row_prompt, micro.response_ids, response_lengths)
        logits = logits.float()  # a no-op in fp32
        return logits if self.temperature == 1.0 else logits / self.temperature

    def logprobs(self, micro: TrainBatch, with_entropy: bool = True) -> tuple[Tensor, Tensor | None]:
        """(b, T) log-probs of the response tokens and (b, T) entropies (None without `with_entropy`) under the
        distribution the responses were sampled from: the model's logits divided by the rollout temperature (as
        verl and TRL do), so that ratios, KL and entropy are those of the sampling policy. Float32 in every
        precision. The head runs chunk by chunk from the final hidden states (`algo.head_token_logprobs`): no
        [tokens, vocab] tensor is kept for the backward, in any pass."""
        head = self.model.get_output_embeddings()

        def head_logprobs(hidden: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
            return algo.head_token_logprobs(
                hidden, head.weight, head.bias, tokens, self.temperature, with_entropy=with_entropy
            )

        with self.compute_context():
            return self.per_token(micro, head_logprobs)

    def per_token(self, micro: TrainBatch, compute) -> tuple[Tensor | None, ...]:
        """`compute(hidden (..., D), response tokens (...))` -> per-token tensors (...) (or None), placed at (b, T).

        Under sequence parallelism each rank computes only the positions its slice holds (the head never runs on
        another rank's tokens), and the group adds the parts up: every rank returns the whole (b, T) result."""
        if self.sequence is None:
            return compute(self._response_hidden(micro), micro.response_ids)
        hidden, index = self.shared_hidden(micro)
        mine = index >= 0
        parts = compute(hidden[index[mine]], micro.response_ids[mine])
        return tuple(None if p is None else self.sequence.sum_over_group(_placed(p, mine)) for p in parts)

    def _response_hidden(self, micro: TrainBatch) -> Tensor:
        """(b, T, D) the final (normed) hidden states that predict each response token."""
        if self.shared is None:
            out = self.model.get_decoder()(
                input_ids=micro.input_ids,
                attention_mask=micro.attention_mask.long(),
                position_ids=position_ids(micro.attention_mask),
                use_cache=False,
            )
            return response_columns(out.last_hidden_state, micro.prompt_width, micro.response_ids.shape[1])
        prompts, row_prompt, response_lengths = prompt_sharing(micro)  # (in `logprobs`' autocast region)
        hidden, index = self.shared.response_hidden(prompts, row_prompt, micro.response_ids, response_lengths)
        return hidden[index]

    def shared_hidden(self, micro: TrainBatch) -> tuple[Tensor, Tensor]:
        """With the shared-prefix forward: the final hidden states that predict response tokens and their
        (b, T) index (`SharedPrefixForward.response_hidden`)."""
        prompts, row_prompt, response_lengths = prompt_sharing(micro)
        with self.compute_context():
            return self.shared.response_hidden(prompts, row_prompt, micro.response_ids, response_lengths)


def _placed(values: Tensor, where: Tensor) -> Tensor:
    """`values` (n,) at the n True positions of `where` (b, T), zeros elsewhere (differentiable)."""
    placed = values.new_zeros(where.shape)
    placed[where] = values
    return placed


class TrainedModule(nn.Module):
    """The model a worker trains, with the worker's training pass as its forward: DDP and FSDP2 act in a
    module's forward and backward, so the pass they wrap must be the whole of it (the shared-prefix forward
    reads the weights directly instead of calling the model)."""

    PREFIX = "model."

    def __init__(self, model: nn.Module, compute):
        super().__init__()
        self.model = model
        self._compute = compute

    def forward(self, micro: TrainBatch, **options):
        return self._compute(micro, **options)

    def blocks(self) -> list[nn.Module]:
        """The decoder blocks of the trained model (a causal LM, or a critic's body): FSDP2's units."""
        decoder = getattr(self.model, "body", None) or self.model.get_decoder()
        return list(decoder.layers)


def unprefixed(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix(TrainedModule.PREFIX): v for k, v in state.items()}


def prefixed(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {TrainedModule.PREFIX + k: v for k, v in state.items()}


def passes(dp: DataParallel, forward: ResponseForward, batch: TrainBatch, rows: Tensor, max_tokens: int):
    """This rank's micro-batches of `rows` (whole groups), padded with weight-0 passes over a real row to the
    busiest rank's count: pairs (micro-batch rows, weight scale 1 or 0)."""
    mine = dp.shard(batch, rows)
    return dp.pad(forward.micro_batches(batch, mine, max_tokens), filler=rows[:1])


def accumulate_gradients(dp: DataParallel, trainable: nn.Module, passes, loss_of) -> None:
    """Backward of `loss_of(rows, scale)` for each pass, gradients reduced over ranks on the last one."""
    for i, (rows, scale) in enumerate(passes):
        with dp.grad_sync(trainable, enabled=i == len(passes) - 1):
            (loss_of(rows, scale) * dp.loss_scale).backward()
