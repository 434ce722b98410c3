"""PPO's critic: a value head on a copy of the policy's body, trained with the clipped value loss (DAPO Eq. 3's
targets; token-mean over the mini-batch)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from dapo import algo
from dapo.workers.base import CriticSettings
from dapo.workers.batch import TrainBatch, epochs_of_mini_batches, position_ids, response_columns
from dapo.workers.forward import ResponseForward, TrainedModule, accumulate_gradients, passes, prefixed, unprefixed
from dapo.workers.optim import clip_and_step, end_update, make_optimizer
from dapo.workers.parallel import SINGLE_PROCESS, DataParallel
from dapo.workers.shards import load_shards, save_shards
from dapo.workers.stats import Accumulator


class ValueModel(nn.Module):
    """A critic: the policy's transformer body (a copy) with a scalar head on every position."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.body = copy.deepcopy(policy.get_decoder())
        hidden = policy.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        with torch.autocast(hidden.device.type, enabled=False):  # the head stays float32 under bf16-mixed
            return self.head(hidden.float()).squeeze(-1)


class CriticWorker:
    """Holds the value model of PPO and its own optimiser. Like the policy, it computes each prompt once for
    its responses when the shared-prefix forward covers the body (`share_prompt_forward`)."""

    def __init__(self, policy: nn.Module, settings: CriticSettings, parallel: DataParallel = SINGLE_PROCESS):
        self.model = ValueModel(policy)
        self.settings = settings
        self.dp = parallel
        # micro-batching, hidden states and the precision of the body's forward
        self.forward = ResponseForward(
            self.model.body,
            settings.share_prompt_forward,
            precision=settings.precision,
            checkpoint_blocks=settings.activation_checkpointing,
            sequence=parallel.sequence,
        )
        self.trainable = parallel.wrap(TrainedModule(self.model, self._values))
        self.optimizer, self.scheduler = make_optimizer(self.trainable.parameters(), settings.optim)

    def _values(self, micro: TrainBatch) -> Tensor:
        # V(s_t) for response token t is read at the position that predicts it (the state before emitting it).
        # The value head runs in float32 on the (possibly bf16) hidden states: values are targets' scale.
        if self.forward.sequence is not None:  # each rank's positions, added up over the group
            return self.forward.per_token(micro, lambda hidden, _: (self.model.head(hidden.float()).squeeze(-1),))[0]
        if self.forward.shared is not None:
            hidden, index = self.forward.shared_hidden(micro)
            return self.model.head(hidden.float()).squeeze(-1)[index]
        with self.forward.compute_context():
            values = self.model(micro.input_ids, micro.attention_mask.long(), position_ids(micro.attention_mask))
        return response_columns(values, micro.prompt_width, micro.response_ids.shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def compute_values(self, batch: TrainBatch) -> Tensor:
        """(B, T) values at every generated token; with several ranks each fills its own rows (zeros elsewhere)."""
        self.model.eval()
        values = torch.zeros(batch.response_mask.shape)
        everything = torch.arange(batch.num_rows)
        for rows, scale in passes(self.dp, self.forward, batch, everything, self.settings.micro_batch_max_tokens):
            v = self.trainable(batch.select(rows).to(self.device))
            if scale:
                values[rows, : v.shape[1]] = v.cpu()
        self.dp.after_forward_only(self.trainable)
        return values * batch.generated_mask

    def update(self, batch: TrainBatch, groups_per_mini_batch: int, epochs: int) -> dict[str, float]:
        self.model.train()
        stats = Accumulator()
        with self.dp.updating(self.optimizer):
            for rows in epochs_of_mini_batches(batch, groups_per_mini_batch, epochs, None):
                self._mini_batch_step(batch, rows, stats)
        metrics = end_update(stats, self.dp, self.optimizer, self.scheduler, "critic")
        self.model.eval()
        return metrics

    def _mini_batch_step(self, batch: TrainBatch, rows: Tensor, stats: Accumulator) -> None:
        weights = torch.zeros(batch.num_rows, dtype=torch.float64)
        weights[rows] = algo.loss_row_weights(batch.response_mask[rows], "token-mean")
        losses = [0.0]

        def loss_of(micro_rows: Tensor, scale: float) -> Tensor:
            micro = batch.select(micro_rows).to(self.device)
            loss, clipped = algo.clipped_value_loss(
                self.trainable(micro), micro.old_values, micro.returns, self.settings.value_clip,
                mask=micro.response_mask,
            )  # fmt: skip
            total = algo.weighted_token_sum(loss, micro.response_mask, (weights[micro_rows] * scale).to(self.device))
            losses[0] += float(total.detach())
            stats.add_masked("critic/vf_clipfrac", clipped, micro.response_mask * scale)
            return total

        my_passes = passes(self.dp, self.forward, batch, rows, self.settings.micro_batch_max_tokens)
        accumulate_gradients(self.dp, self.trainable, my_passes, loss_of)
        stats.add_scalar("critic/vf_loss", self.dp.sum(losses)[0])
        clip_and_step(self.trainable, self.optimizer, self.settings.optim.grad_clip, stats, "critic")

    def state_dict(self, sharded: bool = False) -> dict:
        """As `PolicyWorker.state_dict`."""
        if sharded:
            return {"scheduler": self.scheduler.state_dict()}
        weights, optimizer = self.dp.full_state(self.trainable, self.optimizer)
        return {"model": unprefixed(weights), "optimizer": optimizer, "scheduler": self.scheduler.state_dict()}

    def save_shards(self, directory: Path) -> None:
        save_shards(self.trainable, self.optimizer, Path(directory))

    def load_state_dict(self, state: dict, shards: Path | None = None) -> None:
        with self.dp.updating(self.optimizer):  # the loaded moments go where an update leaves them
            if shards is not None:
                load_shards(self.trainable, self.optimizer, Path(shards))
            else:
                self.dp.load_full_state(self.trainable, self.optimizer, prefixed(state["model"]), state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        pass
