"""Adversarial batch classifier on the cell embedding (domain confusion)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class BatchAdversary(nn.Module):
    """A classifier of each cell's batch from its embedding, played against the encoder.

    Two losses from one forward pass (domain confusion, Tzeng et al. 2015): the
    classifier learns to predict the batch from the detached embedding (cross-entropy),
    and the encoder, through a copy of the classifier that it cannot change, learns to
    make the classifier's prediction uniform over batches (cross-entropy against the
    uniform distribution, scaled by ``weight``). Its optimum is an embedding from which
    the classifier cannot tell batches apart; unlike a reversed gradient, the encoder
    gains nothing by swapping batches. The batch still enters the decoder, which
    explains batch effects in expression without the embedding carrying them.

    Parameters
    ----------
    n_input
        Size of the cell embedding.
    n_batch
        Number of batches (at least 2).
    weight
        Scale of the confusion loss reaching the encoder.
    n_hidden
        Width of the classifier's hidden layer.
    """

    def __init__(self, n_input: int, n_batch: int, weight: float, n_hidden: int = 128) -> None:
        super().__init__()
        if n_batch < 2:
            raise ValueError(f"A batch adversary needs at least 2 batches, got {n_batch}.")
        if weight <= 0:
            raise ValueError(f"The adversary's weight must be positive, got {weight}.")
        self.weight = weight
        self.classifier = nn.Sequential(
            nn.LayerNorm(n_input),
            nn.Linear(n_input, n_hidden),
            nn.GELU(),
            nn.Linear(n_hidden, n_batch),
        )

    def forward(
        self, embedding: torch.Tensor, batch_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses of the classifier and of the encoder, from embeddings (b, n_input).

        Returns
        -------
        tuple of torch.Tensor
            The classifier's cross-entropy on the true batches (gradient only to the
            classifier) and ``weight`` times the cross-entropy of its prediction against
            the uniform distribution (gradient only to the embedding).
        """
        embedding = embedding.float()
        classifier_loss = F.cross_entropy(
            self.classifier(embedding.detach()), batch_index.view(-1).long()
        )
        frozen = {name: p.detach() for name, p in self.classifier.named_parameters()}
        log_p = functional_call(self.classifier, frozen, (embedding,)).log_softmax(-1)
        confusion_loss = -log_p.mean(-1).mean()
        return classifier_loss, self.weight * confusion_loss
