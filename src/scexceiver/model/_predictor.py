"""ExceiverPredictor: a pretrained Exceiver fine-tuned to predict a cell-level target."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager, fields

from scexceiver.data import gene_keys
from scexceiver.module import ExceiverPredictorModule
from scexceiver.train import ExceiverPredictorTrainingPlan

from ._fields import GenePanelLayerField
from ._model import ExceiverModel
from ._query import load_query_data

logger = logging.getLogger(__name__)


class ExceiverPredictor(ExceiverModel):
    """Exceiver fine-tuned to predict a cell label (or a continuous value).

    The paper's downstream model: the pretrained Exceiver plus one extra learned decoder
    query whose output feeds a classification head; it trains on the masked-expression
    MSE plus ``ce_weight`` times the cross-entropy of the labelled cells. Cells marked
    with ``unlabeled_category`` take part in the masked objective only. Build it with
    :meth:`from_pretrained`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    preset
        Architecture preset (taken from the pretrained model by :meth:`from_pretrained`).
    gene_vocabulary
        Gene keys of the gene table; ``None``: the genes of ``adata``.
    task
        ``"classification"`` or ``"regression"``.
    ce_weight
        Weight of the prediction loss against the masked-expression MSE.
    registry
        A saved scvi-tools registry, to build the predictor without data (used by
        :meth:`load`).
    **model_kwargs
        Module configuration overrides, as for :class:`~scexceiver.ExceiverModel`.

    Examples
    --------
    >>> predictor = scexceiver.ExceiverPredictor.from_pretrained(
    ...     model, adata, labels_key="cell_type"
    ... )
    >>> predictor.train(max_epochs=10)
    >>> adata.obs["predicted"] = predictor.predict()
    >>> probabilities = predictor.predict(soft=True)
    """

    _module_cls = ExceiverPredictorModule
    _training_plan_cls = ExceiverPredictorTrainingPlan
    # the target may be missing (unlabelled cells); setup_anndata checks it
    _checked_obs_keys = ("batch_key",)

    def __init__(
        self,
        adata: AnnData | None = None,
        preset: Literal["default", "paper", "integration"] = "default",
        gene_vocabulary: Sequence[str] | None = None,
        task: Literal["classification", "regression"] = "classification",
        ce_weight: float = 1.0,
        *,
        registry: dict | None = None,
        **model_kwargs,
    ) -> None:
        self.task = task
        self.ce_weight = ce_weight
        super().__init__(
            adata,
            preset=preset,
            gene_vocabulary=gene_vocabulary,
            registry=registry,
            **model_kwargs,
        )
        self._model_summary_string += f" Predicts {task} ({self.module.n_classes} outputs)."
        self.init_params_ = self._resolved_init_params(locals())

    def _module_kwargs(self, config: dict) -> dict:
        n_classes = len(self.classes) if self.task == "classification" else 1
        return {**config, "n_classes": n_classes, "task": self.task, "ce_weight": self.ce_weight}

    @property
    def classes(self) -> np.ndarray:
        """Class names in the order of the predicted probabilities."""
        if self.task != "classification":
            raise AttributeError("A regression predictor has no classes.")
        mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        return np.asarray(mapping.categorical_mapping[:-1])

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str | None = None,
        layer: str | None = None,
        batch_key: str | None = None,
        gene_key: str | None = None,
        task: Literal["classification", "regression"] = "classification",
        unlabeled_category: str = "unknown",
        **kwargs,
    ) -> None:
        """Register an AnnData of raw counts and a target with the predictor.

        Parameters
        ----------
        adata
            AnnData with raw counts.
        labels_key
            ``obs`` column of the target: categories (cells equal to
            ``unlabeled_category`` are unlabelled) or, for regression, numbers (NaN
            unlabelled).
        layer, batch_key, gene_key
            As :meth:`scexceiver.ExceiverModel.setup_anndata`.
        task
            ``"classification"`` or ``"regression"``.
        unlabeled_category
            Value of ``labels_key`` that marks unlabelled cells (classification).
        """
        if gene_key is not None:
            gene_keys(adata.var, gene_key)
        if labels_key is None or labels_key not in adata.obs:
            raise ValueError(f"labels_key {labels_key!r} must be a column of adata.obs.")
        if task == "classification" and adata.obs[labels_key].isna().any():
            raise ValueError(
                f"adata.obs[{labels_key!r}] has missing values; mark unlabelled cells with "
                f"{unlabeled_category!r} (unlabeled_category) instead of NaN."
            )
        setup_method_args = cls._get_setup_method_args(**locals())
        labels_field = (
            fields.LabelsWithUnlabeledObsField(
                REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category
            )
            if task == "classification"
            else fields.NumericalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key)
        )
        anndata_fields = [
            GenePanelLayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            fields.CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            labels_field,
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def from_pretrained(
        cls,
        model: ExceiverModel,
        adata: AnnData,
        labels_key: str,
        *,
        init: Literal["pretrained", "scratch"] = "pretrained",
        task: Literal["auto", "classification", "regression"] = "auto",
        ce_weight: float = 1.0,
        class_balanced: bool = False,
        unlabeled_category: str = "unknown",
        min_gene_overlap: float = 0.5,
    ) -> ExceiverPredictor:
        """A predictor of ``adata.obs[labels_key]`` built from a pretrained Exceiver.

        Parameters
        ----------
        model
            A trained :class:`~scexceiver.ExceiverModel` (its architecture, and with
            ``init="pretrained"`` its weights, gene vocabulary and normalisation).
        adata
            AnnData of raw counts with the target; its genes are aligned to the model's
            vocabulary (new genes get fresh embeddings). It is registered with the
            model's ``layer``, ``batch_key`` and ``gene_key``.
        labels_key
            ``obs`` column of the target.
        init
            ``"pretrained"``: start from the model's weights (fine-tuning).
            ``"scratch"``: the same architecture, freshly initialised, with normalisation
            fitted on ``adata`` when it trains (the baseline that shows what
            pretraining brings).
        task
            ``"auto"``: regression for a numeric column, classification otherwise.
        ce_weight
            Weight of the prediction loss against the masked-expression MSE.
        class_balanced
            Weight the cross-entropy by inverse class frequency among labelled cells.
        unlabeled_category
            Value marking unlabelled cells (classification; regression uses NaN).
        min_gene_overlap
            Smallest accepted gene overlap with the model's vocabulary.

        Returns
        -------
        ExceiverPredictor
            Ready to :meth:`train`.
        """
        if init not in ("pretrained", "scratch"):
            raise ValueError(f"init must be 'pretrained' or 'scratch', got {init!r}.")
        if labels_key not in adata.obs:
            raise ValueError(f"labels_key {labels_key!r} is not a column of adata.obs.")
        if task == "auto":
            column = adata.obs[labels_key]
            numeric = pd.api.types.is_numeric_dtype(column) and not (
                pd.api.types.is_bool_dtype(column)
            )
            task = "regression" if numeric else "classification"
        setup = model.registry_["setup_args"]
        cls.setup_anndata(
            adata,
            labels_key=labels_key,
            layer=setup.get("layer"),
            batch_key=setup.get("batch_key"),
            gene_key=setup.get("gene_key"),
            task=task,
            unlabeled_category=unlabeled_category,
        )
        init_kwargs = {"task": task, "ce_weight": ce_weight}
        if init == "pretrained":
            predictor = load_query_data(
                cls,
                adata,
                model,
                freeze_backbone=False,
                min_gene_overlap=min_gene_overlap,
                **init_kwargs,
            )
        else:
            model_kwargs = model.init_params_["kwargs"].get("model_kwargs", {})
            predictor = cls(adata, preset=model.preset, **model_kwargs, **init_kwargs)
        predictor._fit_target(class_balanced)
        return predictor

    @torch.no_grad()
    def _fit_target(self, class_balanced: bool) -> None:
        """Class weights (classification) or target standardisation (regression)."""
        target = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY))
        target = target.ravel()
        module = self.module
        if self.task == "regression":
            labelled = target[~np.isnan(target)]
            if labelled.size == 0:
                raise ValueError("No labelled cells: every target value is NaN.")
            module.target_mean.fill_(float(labelled.mean()))
            module.target_std.fill_(float(labelled.std()) or 1.0)
            return
        counts = np.bincount(
            target[target < module.n_classes].astype(int), minlength=module.n_classes
        )
        if counts.sum() == 0:
            raise ValueError("No labelled cells: every label is the unlabeled category.")
        if class_balanced:
            weights = np.where(
                counts > 0, counts.sum() / (module.n_classes * np.maximum(counts, 1)), 0.0
            )
            module.class_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        if adata is not None and self.adata_manager is not None:
            setup = self.registry_["setup_args"]
            if setup["labels_key"] not in adata.obs:
                # data to predict need no target: mark every cell unlabelled (as scANVI)
                unlabelled = np.nan if self.task == "regression" else setup["unlabeled_category"]
                adata.obs[setup["labels_key"]] = unlabelled
        return super()._validate_anndata(adata, copy_if_view)

    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Predict the target of each cell from its unmasked encoding.

        Parameters
        ----------
        adata
            AnnData of raw counts (genes aligned by key); ``None`` uses the predictor's.
            If it lacks the target column, the column is added with every cell
            unlabelled.
        indices
            Cells; all by default.
        soft
            Return class probabilities instead of labels (classification).
        batch_size
            Minibatch size.

        Returns
        -------
        numpy.ndarray or pandas.DataFrame
            Predicted labels (or values, for regression) per cell; with ``soft=True`` a
            cells x classes DataFrame of probabilities.
        """
        adata, loader = self._inference_loader(adata, indices, batch_size)
        outputs = []
        for tensors in loader:
            latents = self.module.inference(
                **self.module._get_inference_input(tensors), masking=False
            )["latents"]
            outputs.append(self.module.predict_from_latents(latents).float().cpu())
        output = torch.cat(outputs)
        if self.task == "regression":
            return (output * self.module.target_std.cpu() + self.module.target_mean.cpu()).numpy()
        if soft:
            obs_names = (
                adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]
            )
            return pd.DataFrame(
                torch.softmax(output, dim=1).numpy(), index=obs_names, columns=self.classes
            )
        return self.classes[output.argmax(1).numpy()]
