"""A MONAI SupervisedTrainer that distils a frozen teacher into the student in one pass per network.

Each iteration runs the teacher once (eval mode, no_grad) and the student once with
``return_features=True``; the HDKD loss reads the logits and all stage maps from those two outputs.
The published code instead re-ran each network's stage prefix for every distilled stage (about 2.9x
the compute, and repeated BatchNorm statistic updates); the gradients are the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from pipeline.device import autocast as bf16_autocast
from pipeline.distill.losses import TERMS, HDKDLoss
from pipeline.networks import check_feature_compatibility
from pipeline.networks.output import HDKDOutput

LOSS_TERMS = "loss_terms"


def loss_terms_transform(output: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{"loss", "ce", "logit_kd", "feature_kd"}`` as floats from a DistillationTrainer's
    ``engine.state.output`` (a dict, or the decollated list of per-image dicts).

    Pass it as ``output_transform`` of StatsHandler / MLFlowHandler / TensorBoardStatsHandler to log
    every term of the loss per iteration.
    """
    first = output[0] if isinstance(output, Sequence) else output
    loss = first[Keys.LOSS]
    loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    return {Keys.LOSS: loss, **{term: float(first[LOSS_TERMS][term]) for term in TERMS}}


def _unwrap(network: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel / torch.compile wrapper."""
    inner = getattr(network, "module", network)
    return getattr(inner, "_orig_mod", inner)


class DistillationTrainer(SupervisedTrainer):
    """SupervisedTrainer for HDKD: CE training when ``teacher`` is None, distillation otherwise.

    Args beyond ``SupervisedTrainer``'s (all of which are accepted by keyword and passed on):
        loss_function: an ``HDKDLoss``.
        teacher: the trained teacher (weights already loaded, e.g. with ``pipeline.networks.load_weights``),
            or None. It is moved to ``device``, frozen (requires_grad False) and kept in eval mode; it is
            a plain attribute, so it is not part of ``network``, the optimizer, a DDP wrapper or any
            checkpoint that saves ``network``.
        teacher_bf16: run the teacher forward under bfloat16 autocast (CPU or CUDA); off by default (the
            bundles turn it on where bf16 is native: ``pipeline.device.use_bf16``).
        bf16: run the student forward under bfloat16 autocast (CPU or CUDA); off by default.
        channels_last: convert the networks and every input batch to ``torch.channels_last``.

    ``engine.state.output`` holds MONAI's image/label/pred/loss ("pred" = the student's predictive
    logits; an HDKD student's is the mean of its two heads) and "loss_terms", a dict of floats
    ("ce", "logit_kd", "feature_kd"); log them with ``loss_terms_transform``. The student runs through
    ``inferer`` (MONAI's ``SimpleInferer`` by default) as ``inferer(x, network, return_features=True)``,
    which must return an ``HDKDOutput``: an inferer that passes keyword arguments on to the network.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: HDKDLoss,
        teacher: nn.Module | None = None,
        teacher_bf16: bool = False,
        bf16: bool = False,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(loss_function, HDKDLoss):
            raise TypeError(
                f"loss_function must be a pipeline.distill.HDKDLoss, got {type(loss_function).__name__}"
            )
        device = torch.device(device)
        if channels_last:
            network.to(memory_format=torch.channels_last)
        if teacher is not None:
            self._check_teacher(teacher, network, optimizer, loss_function)
            teacher.to(device).requires_grad_(False).eval()
            if channels_last:
                teacher.to(memory_format=torch.channels_last)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        self.teacher = teacher
        self.teacher_bf16 = teacher_bf16
        self.bf16 = bf16
        self.channels_last = channels_last

    @staticmethod
    def _check_teacher(teacher: nn.Module, network: nn.Module, optimizer: Optimizer, loss: HDKDLoss) -> None:
        """ValueError if the teacher is the student, is being optimised, or cannot be distilled from."""
        student = _unwrap(network)
        if teacher is student:
            raise ValueError("teacher and network are the same module")
        teacher_params = {id(param) for param in teacher.parameters()}
        optimised = [param for group in optimizer.param_groups for param in group["params"]]
        if any(id(param) in teacher_params for param in optimised):
            raise ValueError(
                "the optimizer holds teacher parameters; build it from the student's parameters only"
            )
        teacher_classes, student_classes = (
            getattr(teacher, "num_classes", None),
            getattr(student, "num_classes", None),
        )
        if teacher_classes != student_classes:
            raise ValueError(f"teacher has {teacher_classes} classes, student {student_classes}")
        if loss.uses_features:
            check_feature_compatibility(teacher, student)

    def _register_decollate(self) -> None:
        """MONAI's decollation, keeping "loss_terms" whole: it is set aside before and copied into every
        decollated item after (decollating a dict of floats would scramble it)."""
        held: dict[str, dict[str, float]] = {}

        def set_aside(engine: DistillationTrainer) -> None:
            if isinstance(engine.state.output, dict) and LOSS_TERMS in engine.state.output:
                held[LOSS_TERMS] = engine.state.output.pop(LOSS_TERMS)

        def put_back(engine: DistillationTrainer) -> None:
            terms = held.pop(LOSS_TERMS, None)
            if terms is None:
                return
            items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
            for item in items:
                item[LOSS_TERMS] = dict(terms)

        self.add_event_handler(IterationEvents.MODEL_COMPLETED, set_aside)
        super()._register_decollate()
        self.add_event_handler(IterationEvents.MODEL_COMPLETED, put_back)

    def _step_flags(self) -> tuple[bool, bool]:
        """(zero the gradients before, step the optimizer after) this iteration (gradient accumulation)."""
        acc = self.accumulation_steps
        if acc == 1:
            return True, True
        epoch_length = self.state.epoch_length
        local = self.state.iteration - 1
        if epoch_length is not None:
            local %= epoch_length
        last_of_epoch = epoch_length is not None and local + 1 == epoch_length
        return local % acc == 0, (local + 1) % acc == 0 or last_of_epoch

    def teacher_forward(self, x: torch.Tensor) -> HDKDOutput | None:
        """The frozen teacher's output for ``x`` (None without a teacher): eval mode, no_grad,
        optionally under bfloat16 autocast."""
        if self.teacher is None:
            return None
        self.teacher.eval()
        with torch.no_grad(), bf16_autocast(x.device, self.teacher_bf16):
            return self.teacher(x, return_features=True)

    def _iteration(self, engine: DistillationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One step: teacher forward, student forward, HDKD loss, backward, optimizer step; fires the
        same IterationEvents as SupervisedTrainer."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) != 2 and (batch[2] or batch[3]):
            raise ValueError("DistillationTrainer does not pass extra network arguments from prepare_batch")
        inputs, targets = batch[0], batch[1]
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        y = targets.as_tensor() if isinstance(targets, MetaTensor) else targets
        if engine.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        zero_grad, step = engine._step_flags()
        engine.network.train()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        scaler = engine.scaler
        autocast = (
            torch.autocast("cuda", **engine.amp_kwargs) if scaler is not None else contextlib.nullcontext()
        )
        with autocast:
            teacher_out = engine.teacher_forward(x)
            with bf16_autocast(x.device, engine.bf16):
                student_out = engine.inferer(x, engine.network, return_features=True)
            engine.state.output[Keys.PRED] = student_out.logits
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = engine.loss_function(student_out, teacher_out, y)
            engine.state.output[Keys.LOSS] = terms["loss"]
            engine.state.output[LOSS_TERMS] = {term: float(terms[term].detach()) for term in TERMS}
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss = terms["loss"] / engine.accumulation_steps
        (loss if scaler is None else scaler.scale(loss)).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if step and scaler is None:
            engine.optimizer.step()
        elif step:
            scaler.step(engine.optimizer)
            scaler.update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
