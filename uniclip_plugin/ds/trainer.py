"""The training loop: a :class:`Trainer` that owns the engine, the position (``TrainState``) and the logs, and
:func:`train`, the whole run from the set-up to the last checkpoint.

Resume is exact mid-epoch: checkpoints carry the data position and every rank's RNG states; the epoch's data pipeline
is rebuilt with the same seeds and fast-forwarded (the skipped batches are decoded, not trained on).
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from uniclip_plugin import integration
from uniclip_plugin.ds import checkpoint as ckpt
from uniclip_plugin.ds import distributed
from uniclip_plugin.ds import validate as validation
from uniclip_plugin.ds.build import build_model, param_groups, seed_everything
from uniclip_plugin.ds.data import epoch_loader
from uniclip_plugin.ds.errors import HarnessError
from uniclip_plugin.ds.metrics import Metrics
from uniclip_plugin.ds.setup import RunPlan, plan_run, run_meta
from uniclip_plugin.ds.step import SkipWatcher, train_step


@dataclass
class EngineParts:
    """What :func:`build_engine` makes: the engine and what feeds it.

    Attributes:
        engine: the DeepSpeed engine, in train mode.
        loss_fn: the method's loss behind ``TrainLossAdapter``.
        preprocess: the training image transform.
        tokenizer: the (possibly method-wrapped) tokenizer.
        layout: parameter names of each optimiser group (saved for D5).
        preprocess_val: the evaluation image transform.
        val_tokenizer: the model's plain tokenizer (validation captions are not augmented).
    """

    engine: Any
    loss_fn: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    layout: list[list[str]]
    preprocess_val: Any = None
    val_tokenizer: Any = None


def build_engine(args: argparse.Namespace, plan: RunPlan) -> EngineParts:
    """Loss, model (seeded identically on every rank), ``deepspeed.initialize`` and the tokenizer, in the order that
    fixes the RNG streams of a run (a resumed run depends on it).

    Args:
        args: the trainer's arguments.
        plan: the run plan.

    Returns:
        The :class:`EngineParts`.
    """
    import deepspeed
    import open_clip

    from uniclip_plugin.train_hooks import TrainLossAdapter

    setup = integration.prepare(args, rank=plan.rank, world_size=plan.world_size, exact_global_loss=True)
    loss_fn = TrainLossAdapter(setup.loss, log_every=args.log_every_n_steps, is_master=plan.rank == 0)
    model, preprocess_train, preprocess_val = build_model(args, setup)
    seed_everything(args.seed + plan.rank)  # open_clip_train's random_seed(seed, rank): per-rank views / augmentations
    groups, layout = param_groups(model, args.wd)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=plan.cfg)
    engine.train()
    plain_tokenizer = open_clip.get_tokenizer(args.model)
    return EngineParts(
        engine=engine,
        loss_fn=loss_fn,
        preprocess=preprocess_train,
        tokenizer=setup.wrap_tokenizer(plain_tokenizer),
        layout=layout,
        preprocess_val=preprocess_val,
        val_tokenizer=plain_tokenizer,
    )


def _dtypes(d: dict) -> str:
    return ", ".join(f"{k} {str(v.dtype).replace('torch.', '')}" for k, v in d.items() if torch.is_tensor(v))


def log_dtypes(raw: dict, inputs: dict) -> None:
    """Log the dtypes of the model outputs and of the loss inputs (D4: fp32 logits under bf16)."""
    logging.info(f"Model outputs: {_dtypes(raw)} -> loss inputs: {_dtypes(inputs)}")


class Trainer:
    """Trains a built engine for ``--epochs`` epochs from the start or from ``plan.resume_from``.

    Attributes:
        state: the position (step, epoch, batches consumed in the epoch), saved in every checkpoint.
        meta: the run facts saved with every checkpoint.
        steps_per_epoch: batches per rank per epoch.
    """

    def __init__(self, args: argparse.Namespace, plan: RunPlan, parts: EngineParts):
        from open_clip_train.scheduler import const_lr, cosine_lr

        self.args, self.plan, self.parts, self.engine = args, plan, parts, parts.engine
        self.steps_per_epoch = self._loader(0).num_batches  # a probe: the loader is not iterated
        self.state = ckpt.TrainState(
            steps_per_epoch=self.steps_per_epoch, total_steps=self.steps_per_epoch * args.epochs
        )
        self.meta = run_meta(args, plan.cfg, parts.layout, plan.world_size)
        self.rng_after_fast_forward: Optional[dict] = None
        self._resume()
        self.schedule = (cosine_lr if args.lr_scheduler == "cosine" else const_lr)(
            self.engine.optimizer, args.lr, args.warmup, self.state.total_steps
        )
        self.metrics = Metrics(plan.run_dir, plan.rank == 0, getattr(self.engine, "monitor", None))
        self.skips = SkipWatcher(args.max_skipped_steps, self.state.skipped_steps)
        self.last_saved = self.state.step if plan.resume_from is not None else -1
        self.logged_dtypes = False
        self._t_last, self._samples_since = time.time(), 0

    @classmethod
    def create(cls, args: argparse.Namespace, plan: RunPlan) -> Trainer:
        """Build the engine (:func:`build_engine`) and a trainer for it (resumed when the plan says so)."""
        return cls(args, plan, build_engine(args, plan))

    def _loader(self, epoch: int) -> Any:
        return epoch_loader(
            self.args,
            self.parts.preprocess,
            self.parts.tokenizer,
            epoch,
            self.plan.rank,
            self.plan.micro_batch,
            self.plan.world_size,
        )

    def _resume(self) -> None:
        """Load ``plan.resume_from`` after checking it fits this run (D5) and the data setup."""
        if self.plan.resume_from is None:
            if self.args.resume is not None:
                logging.info(f"--resume {self.args.resume}: no complete checkpoint yet, starting from step 0")
            return
        src_dir, tag = Path(self.plan.resume_from[0]), self.plan.resume_from[1]
        saved = ckpt.read_meta(src_dir, tag)
        ckpt.check_compatible(saved, self.meta)
        ckpt.log_resume(saved, src_dir / tag)
        self.state, self.rng_after_fast_forward = ckpt.load_checkpoint(self.engine, src_dir, tag, rank=self.plan.rank)
        if self.state.steps_per_epoch != self.steps_per_epoch:
            raise HarnessError(
                f"the checkpoint has {self.state.steps_per_epoch} steps per epoch and this data/batch "
                f"setup {self.steps_per_epoch}; resume with the same --train-data/--train-num-samples/"
                f"batch"
            )
        self.state.total_steps = self.steps_per_epoch * self.args.epochs

    def fit(self) -> None:
        """Train the remaining epochs.

        Raises:
            HarnessError: the run stopped (non-finite loss, skipped steps); the message names the last checkpoint.
        """
        try:
            while self.state.epoch < self.args.epochs:
                self.run_epoch()
        except HarnessError as err:
            latest = ckpt.read_latest(self.plan.ckpt_dir) or "none written yet"
            logging.error(f"{err}; last checkpoint: {latest}")
            raise HarnessError(f"{err}; last checkpoint: {latest}") from None
        except RuntimeError as err:
            if not distributed.is_collective_failure(err):
                raise
            raise self._lost_peer(err) from None
        finally:
            self.metrics.close()

    def _lost_peer(self, err: RuntimeError) -> HarnessError:
        """The error for a collective that failed: a peer died (gloo sees its connection close) or timed out."""
        latest = ckpt.read_latest(self.plan.ckpt_dir) or "none written yet"
        text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip())  # drop gloo's "[.../pair.cc:561]" source prefix
        cause = text.splitlines()[0][:160] if text else type(err).__name__
        message = (
            f"rank {self.plan.rank}: a collective failed during step {self.state.step + 1} ({cause}): another "
            f"rank died or stopped answering within --dist-timeout {self.args.dist_timeout:g}s; last "
            f"checkpoint: {latest}; restart all ranks with --resume latest"
        )
        logging.error(message)
        return HarnessError(message)

    def run_epoch(self) -> None:
        """Train the current epoch from its data position, saving every ``--save-every-n-steps`` and at its end."""
        loader = self._loader(self.state.epoch)
        batches = iter(loader)
        for _ in range(self.state.step_in_epoch):  # mid-epoch resume: the same stream, consumed up to the checkpoint
            next(batches)
        if self.rng_after_fast_forward is not None:
            ckpt.restore_rng_state(self.rng_after_fast_forward)
            self.rng_after_fast_forward = None
        self._t_last, self._samples_since = time.time(), 0
        for images, texts in batches:
            self.step(images, texts)
            if self.state.step_in_epoch >= self.steps_per_epoch:
                break
            if self.args.save_every_n_steps > 0 and self.state.step % self.args.save_every_n_steps == 0:
                self.save()
        del batches, loader  # release the dataloader workers before the epoch-end save
        self.state.epoch += 1
        self.state.step_in_epoch = 0
        self.validate()
        self.save()

    def validate(self) -> Optional[dict]:
        """open_clip_train's validation after a completed epoch when ``--val-data``/``--val-frequency`` say so."""
        if not validation.due(self.args, self.state.epoch):
            return None
        loader = validation.val_loader(
            self.args, self.parts.preprocess_val, self.parts.val_tokenizer, self.plan.micro_batch
        )
        results = self.plan.ckpt_dir / "results.jsonl" if self.plan.rank == 0 else None
        metrics = validation.evaluate(self.engine, loader, self.state.epoch, self.args, results)
        del loader
        self.metrics.log_validation(metrics, int(getattr(self.engine, "global_samples", self.state.step)))
        return metrics

    def step(self, images: torch.Tensor, texts: torch.Tensor) -> float:
        """One optimiser step on this rank's batch, then its metrics line and, when due, the progress line.

        Returns:
            The global-batch loss.
        """
        state = self.state
        lr = self.schedule(state.step)
        loss = train_step(
            self.engine, self.parts.loss_fn, images, texts, state.step, None if self.logged_dtypes else log_dtypes
        )
        self.logged_dtypes = True
        self.skips.update(self.engine.was_step_applied(), state.step)
        state.step += 1
        state.step_in_epoch += 1
        self._samples_since += images.shape[0] * self.plan.world_size
        self.metrics.log(
            state.step,
            {"epoch": state.epoch, "loss": loss, "lr": lr, "skipped_steps": self.skips.total},
            samples=int(getattr(self.engine, "global_samples", state.step)),
        )
        if state.step % max(1, self.args.log_every_n_steps) == 0 or state.step_in_epoch == self.steps_per_epoch:
            self._log_progress(loss, lr)
        return loss

    def _log_progress(self, loss: float, lr: float) -> None:
        state, per_step = self.state, self.plan.micro_batch * self.plan.world_size
        elapsed = max(time.time() - self._t_last, 1e-9)
        logging.info(
            f"Train Epoch: {state.epoch} [{state.step_in_epoch * per_step}/{self.steps_per_epoch * per_step} "
            f"({100.0 * state.step_in_epoch / self.steps_per_epoch:.0f}%)] step {state.step}/"
            f"{state.total_steps} Loss: {loss:.4f} LR: {lr:.3e} "
            f"{self._samples_since / elapsed:.1f} samples/s"
        )
        self._t_last, self._samples_since = time.time(), 0

    def save(self) -> None:
        """Save a checkpoint of the current step on every rank (a collective, D6), unless this step is saved."""
        if self.state.step == self.last_saved:
            return
        self.state.skipped_steps = self.skips.total
        path = ckpt.save_checkpoint(
            self.engine,
            self.plan.ckpt_dir,
            self.state,
            self.meta,
            rank=self.plan.rank,
            keep=self.args.keep_checkpoints,
            barrier=distributed.barrier,
        )
        self.last_saved = self.state.step
        logging.info(f"Saved checkpoint {path}")


def train(args: argparse.Namespace) -> int:
    """Run (or resume) a DeepSpeed training run.

    Args:
        args: the parsed arguments (``cli.build_parser``).

    Returns:
        The exit code (0).

    Raises:
        PluginError: a one-line user error (the CLI prints it).
    """
    plan = plan_run(args)
    trainer = Trainer.create(args, plan)
    trainer.fit()
    logging.info(
        f"Finished {trainer.state.step} steps; export with: python harness/train.py --export {plan.run_dir} "
        f"--out {args.name}.pt"
    )
    return 0
