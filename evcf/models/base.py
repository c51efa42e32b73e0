"""The contract between models and the training loop.

Two kinds of model exist:

* :class:`VAEModel` subclasses (Mult-VAE, Mult-DAE, RecVAE, gated and VampPrior variants) are
  trained by the VAE loop (:mod:`evcf.training.loop`) with mini-batch gradient steps.  Each one has
  a frozen ``Config`` dataclass; ``build_model(name, n_items, **hparams)`` fills it from params.yaml.
* :class:`SelfFittingModel` subclasses (popularity, EASE, WMF, SLIM, CDAE) fit themselves on the
  training matrix, each with its own procedure; the in-run search (:mod:`evcf.training.self_fitting`)
  tries each of ``candidates()`` and keeps the one with the best validation NDCG@100.

Inputs are dense float tensors ``x`` of shape ``(batch, n_items)`` holding the 0/1 click matrix rows
of the users in the batch (built on the training device from a sparse matrix, one batch at a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

import torch
from torch import nn

from evcf.batches import Clicks

if TYPE_CHECKING:  # annotations only: nothing here uses scipy at run time
    import scipy.sparse as sp

__all__ = ["VAEModel", "SelfFittingModel", "LossParts", "Phase"]


@dataclass
class LossParts:
    """What one training step's loss is made of (0-d tensors, means over the users of the batch).

    Only ``loss`` carries the autograd graph.  The other parts are detached tensors on the model's
    device, not Python floats: reading a GPU value (``.item()``, ``float()``) waits for the device,
    so a model's ``loss`` never does it and the caller converts only when it logs.
    """

    loss: torch.Tensor  # the value to back-propagate: nll + beta * kl + penalty
    nll: torch.Tensor  # reconstruction term, -log p(x|z); detached
    kl: torch.Tensor  # KL term before multiplying by beta (0 for a DAE); detached
    penalty: torch.Tensor  # weight penalty added to the loss (Mult-DAE's lambda * sum ||W||^2), or 0


@dataclass(frozen=True)
class Phase:
    """One pass over the training users within an epoch (see :meth:`VAEModel.epoch_phases`)."""

    name: str = "all"  # what the model's loss does in this pass (the model reads it in begin_phase)
    groups: tuple[str, ...] = ("all",)  # the optimizer groups (VAEModel.optimizer_groups) stepped in it


class VAEModel(nn.Module):
    """A model trained by gradient steps.  Subclasses set ``name`` and implement ``loss`` and ``score``.

    How an epoch runs is part of the contract too; the defaults give the plain loop (one optimizer
    over all parameters, one pass per epoch).  A model that trains differently overrides:

    * :meth:`optimizer_groups`: named groups of parameters, each with its own optimizer;
    * :meth:`epoch_phases`: the passes of an epoch over the training users, each in a fresh order,
      and which groups each pass steps;
    * :meth:`on_epoch_start` and :meth:`begin_phase`: hooks the loop calls before an epoch's passes
      and before each pass.
    The loop (``evcf.training.train_epoch``) checkpoints every optimizer and ``state_dict()``, so
    whatever the hooks keep belongs in the module's state (parameters or buffers).
    """

    name: ClassVar[str]
    seeded: ClassVar[bool] = True  # its result depends on the seed: the pipeline runs every seed
    # with `device: cuda`, the pipeline gives its jobs a GPU (gradient steps: always worth one)
    uses_gpu: ClassVar[bool] = True
    # False: the model weighs its KL term itself and ignores the loop's β, so the loop refuses a β
    # schedule other than `none` for it (a setting the user typed would otherwise be ignored)
    uses_beta: ClassVar[bool] = True

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, one optimizer each (same kind and learning rate).  Default: one
        group ``all`` of every parameter, in ``parameters()`` order."""
        return {"all": list(self.parameters())}

    def epoch_phases(self, epoch: int) -> Sequence[Phase]:
        """The passes of epoch ``epoch`` (1-based), in order.  Default: one pass stepping ``all``."""
        return (Phase(),)

    def on_epoch_start(self, epoch: int) -> None:
        """Called once at the start of each epoch (1-based), before its first pass.  Default: nothing."""

    def begin_phase(self, phase: Phase) -> None:
        """Called before each pass; a model whose loss depends on the pass keeps ``phase`` here."""

    def rows_to_init_from(self) -> int:
        """How many training users the model initialises from before its first epoch (drawn at random
        from the run's shuffle generator and handed to :meth:`init_from_rows`).  Default: 0, none."""
        return 0

    def init_from_rows(self, rows: torch.Tensor) -> None:
        """Initialise from ``rows`` (n, n_items), the dense rows of :meth:`rows_to_init_from` training
        users on the run's device.  Default: nothing."""

    def loss(self, x: torch.Tensor, beta: float, clicks: Clicks | None = None) -> LossParts:
        """Training-mode loss for a batch ``x`` (batch, n_items); ``beta`` weights the KL term.

        ``clicks``, where given, are the coordinates of ``x``'s non-zeros (a training batch brings
        them: :class:`~evcf.batches.RowBatch`); a model whose first layer reads the non-zeros
        uses them instead of searching ``x``, which would make the host wait for a GPU.
        """
        raise NotImplementedError

    @torch.no_grad()
    def score(self, x: torch.Tensor, clicks: Clicks | None = None) -> torch.Tensor:
        """Eval-mode scores (batch, n_items) for fold-in rows ``x``: higher is better.

        Uses the posterior mean and no dropout.  The caller masks fold-in items afterwards.
        ``clicks``, as for :meth:`loss`: evaluation passes them (``evaluate(..., with_clicks=True)``).
        """
        raise NotImplementedError


class SelfFittingModel:
    """A model fitted in one call on the training matrix, with its own fitting procedure.

    The training loop tries each of :meth:`candidates`, calls :meth:`fit` for it, scores the
    validation users, and keeps the :meth:`state` of the best setting.  ``fit`` may run any
    algorithm (a closed form, ALS sweeps, coordinate descent, its own gradient loop).
    """

    name: ClassVar[str]
    # False: the result does not depend on the seed, so the pipeline fits it once (first seed only)
    seeded: ClassVar[bool] = False
    # True: its fit gains from the run's GPU, so with `device: cuda` the pipeline gives its jobs one;
    # False: it runs on CPUs (`--device cpu`) and never holds a GPU it would barely use
    uses_gpu: ClassVar[bool] = False
    # True: fit() selects its own best epoch, so the loop passes it the validation users
    # (``validation=(rows in, held-out rows, batch size)``)
    selects_epochs: ClassVar[bool] = False

    def candidates(self) -> Iterable[dict[str, Any]]:
        """Hyperparameter settings to try; the loop keeps the best by validation NDCG@100."""
        return [{}]

    def fit(self, train: sp.csr_matrix, *, seed: int = 0, device: torch.device | None = None,
            **setting: Any) -> None:
        """Fit on ``train`` (users x items, 0/1) with one of :meth:`candidates` as ``setting``.

        ``seed`` seeds any randomness of the fit (ignored by models with ``seeded = False``);
        ``device`` is the run's device, for models that can use it.
        """
        raise NotImplementedError

    @property
    def selection(self) -> dict[str, Any]:
        """What the last :meth:`fit` selected inside itself (columns of tuning.csv).  Default: nothing."""
        return {}

    def clear_cache(self) -> None:
        """Drop what the fits shared between settings; the loop calls it once the search is over.
        Default: nothing."""

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (batch, n_items) for fold-in rows ``x`` (float32 tensor on any device)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """Everything needed to score again (saved in the checkpoint)."""
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (the loop calls it with the best setting's state)."""
        raise NotImplementedError

    def path_state(self) -> dict[str, Any] | None:
        """What the next :meth:`fit` starts from when the fits depend on each other (SLIM's warm
        start along its regularisation path); the search's checkpoint keeps it.  None: each fit
        depends only on its setting and the seed."""
        return None

    def load_path_state(self, state: dict[str, Any] | None) -> None:
        """Restore what :meth:`path_state` returned (a resumed search goes on from where it was)."""
