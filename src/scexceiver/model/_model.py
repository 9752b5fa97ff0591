"""ExceiverModel: the scvi-tools model class (AnnData in, arrays out)."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scvi
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager, fields
from scvi.model._utils import use_distributed_sampler
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from scexceiver._constants import GENE_PANEL
from scexceiver.data import (
    ExceiverDataLoader,
    ExceiverDataSplitter,
    GeneOverlap,
    GeneStatistics,
    GeneVocabulary,
    check_counts,
    check_obs_key,
    counts_matrix,
    gene_statistics,
    validate_setup,
)
from scexceiver.data._neighbourhoods import cosine_neighbours, principal_scores
from scexceiver.data._panels import check_gene_panels, measured_table, to_vocabulary
from scexceiver.data._validate import registered_gene_keys, require_finite
from scexceiver.module import ExceiverModule
from scexceiver.module._module import _BATCH_INPUT_THINNING, _neighbour_options
from scexceiver.train import ExceiverTrainingPlan, PeriodicCheckpoint
from scexceiver.train._checkpoint import resolve_resume

from . import _persist
from ._fields import GenePanelLayerField, MuDataGenePanelLayerField
from ._presets import TRAINING, default_max_epochs, resolve_preset
from ._query import load_query_data

logger = logging.getLogger(__name__)

#: Nearest cells per training cell, and cells per neighbourhood minibatch group, of
#: ``neighbour_preservation``'s minibatches.
_INPUT_NEIGHBOURS = 15
_NEIGHBOURHOOD_SIZE = 4


class ExceiverModel(UnsupervisedTrainingMixin, BaseModelClass):
    """Exceiver, a single-cell gene expression language model (Connell et al. 2022).

    A Perceiver IO over each cell's expressed genes: learned latent queries cross-attend
    to gene tokens scaled by expression, transformer layers refine the latents, and gene
    queries cross-attend back to predict held-out expression. The latents are the cell
    embedding; the rows of the decoder's gene table are gene embeddings.

    Parameters
    ----------
    adata
        AnnData (or MuData) registered with :meth:`setup_anndata` (:meth:`setup_mudata`).
        ``X`` (or the registered layer) must hold raw counts.
    preset
        ``"default"``: sparse tokens and the changes that make the architecture learn
        biology (see the docs); with two or more batches, also each batch's own
        input statistics, gene levels and decoder conditioning, which keep the batch
        out of the latents, and ``neighbour_preservation=3`` with an encoder gene table
        of its own (on Kang 2018 scib total and kNN macro-F1 above scVI's; see the
        docs' quality page). ``"paper"``: the released model's shapes and math
        exactly (225,359 trainable parameters at 19,067 genes), for reproduction.
        ``"integration"``: per-batch input statistics and the default's neighbour loss,
        with gene embeddings and latents started at N(0, 1) and no batch in the decoder:
        it mixes batches more (on the PBMC 3k + 68k set scib total above scVI's, where
        the default's is below), at two to seven times the default's masked-gene error
        on Kang 2018 (see the docs' quality page).
    gene_vocabulary
        Gene keys the model knows, in the order of its gene table; ``None`` uses the genes
        of ``adata``. Data with other genes are aligned to it by key (:meth:`align_genes`).
    **model_kwargs
        Overrides of the preset's module configuration, e.g. ``n_latents``, ``dim``,
        ``n_layers``, ``batch_injection="encoder"``, ``readout="mean"``, or
        ``cycle_consistency=1`` for batches that hold the same cell populations (scib
        total above scVI's on Kang 2018, see the docs' quality page), or
        ``neighbour_preservation=0`` to train a model of several batches without the
        neighbour loss; see
        :class:`~scexceiver.module.ExceiverModule` and :class:`~scexceiver.module.Exceiver`.

    Examples
    --------
    >>> adata = scexceiver.datasets.pbmc3k()
    >>> scexceiver.ExceiverModel.setup_anndata(adata)
    >>> model = scexceiver.ExceiverModel(adata)
    >>> model.train(max_epochs=20)
    >>> adata.obsm["X_exceiver"] = model.get_latent_representation()
    >>> adata.varm["exceiver_gene_embedding"] = model.get_gene_embeddings()
    """

    _module_cls = ExceiverModule
    _training_plan_cls = ExceiverTrainingPlan
    _data_splitter_cls = ExceiverDataSplitter
    _data_loader_cls = ExceiverDataLoader

    #: Smallest accepted :attr:`~scexceiver.data.GeneOverlap.fraction` of data given to
    #: the model (see :meth:`align_genes`); set it on an instance to change it.
    min_gene_overlap: float = 0.5

    # setup arguments naming obs columns that must be complete (no missing values)
    _checked_obs_keys: tuple[str, ...] = ("batch_key", "labels_key")

    def __init__(
        self,
        adata: AnnData | None = None,
        preset: Literal["default", "paper", "integration"] = "default",
        gene_vocabulary: Sequence[str] | None = None,
        *,
        registry: dict | None = None,
        **model_kwargs,
    ) -> None:
        super().__init__(adata, registry=registry)
        config = resolve_preset(preset, **model_kwargs)
        if config.get("batch_standardise", False) is None:
            config["batch_standardise"] = self.summary_stats.n_batch >= 2
        if config.get("input_thinning", 0.0) is None:
            config["input_thinning"] = (
                _BATCH_INPUT_THINNING if self.summary_stats.n_batch >= 2 else 0.0
            )
        config["neighbour_preservation"], config["tie_gene_embeddings"] = _neighbour_options(
            config["neighbour_preservation"],
            config["tie_gene_embeddings"],
            self.summary_stats.n_batch,
            config["batch_standardise"],
        )
        self.preset = preset
        self._config = config
        self.gene_vocabulary_ = GeneVocabulary.from_keys(
            self._gene_keys(self.adata) if gene_vocabulary is None else gene_vocabulary
        )
        self.module = self._module_cls(
            n_genes=len(self.gene_vocabulary_),
            n_batch=self.summary_stats.n_batch,
            **self._module_kwargs(config),
        )
        n_params = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        self._model_summary_string = (
            f"{type(self).__name__} ({preset} preset): {len(self.gene_vocabulary_)} genes, "
            f"{config['n_latents']} latents x {config['dim']}, {config['n_layers']} layers, "
            f"{config['token_mode']} tokens, {n_params:,} trainable parameters."
        )
        self.init_params_ = self._resolved_init_params(locals())

    def _module_kwargs(self, config: dict) -> dict:
        """Keyword arguments of the module beyond the vocabulary and batch sizes."""
        return config

    def _resolved_init_params(self, local_vars: dict) -> dict:
        """Init parameters with the preset resolved into every module argument.

        Saved models record the whole configuration, so a later change to a preset's
        defaults never changes how an existing model loads.
        """
        params = self._get_init_params(local_vars)
        params["kwargs"]["model_kwargs"] = dict(self._config)
        return params

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_key: str | None = None,
        allow_non_integer: bool = False,
        gene_panel_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData of raw counts with the model.

        The data are checked first (see :func:`scexceiver.data.validate_setup`): raw
        counts (finite, non-negative, whole numbers), existing layer and keys, unique gene
        keys, a supported matrix type. Nothing in ``adata`` changes except the setup that
        scvi-tools records (``uns['_scvi_uuid']``, ``uns['_scvi_manager_uuid']`` and
        ``obs['_scvi_batch']`` / ``obs['_scvi_labels']``).

        Parameters
        ----------
        adata
            AnnData with raw counts in ``X`` or ``layers[layer]`` (sparse is best).
        layer
            Layer holding raw counts; ``None`` uses ``X``.
        batch_key
            ``obs`` column of batch labels; the model conditions on it.
        labels_key
            ``obs`` column of cell labels (used by downstream predictors).
        gene_key
            ``var`` column of stable gene identifiers (e.g. Ensembl IDs) that define the
            gene vocabulary; ``None`` uses ``var_names``.
        allow_non_integer
            Accept counts that are not whole numbers, e.g. ambient-corrected counts
            (SoupX, CellBender). Log-normalised or scaled data are still wrong input.
        gene_panel_key
            For a corpus of sources with different gene panels (e.g. from
            :func:`~scexceiver.data.open_h5ad_corpus`, which uses ``"source"``): the
            ``obs`` column naming each cell's source and the ``varm`` key of a genes x
            sources boolean DataFrame of the genes each source measured. A gene its source
            did not measure is then never a zero decoding target of a cell, and gene
            statistics are over the cells that measured the gene. ``None``: every cell
            measured every gene.
        """
        check_gene_panels(adata, gene_panel_key)
        validate_setup(
            adata,
            layer=layer,
            batch_key=batch_key,
            labels_key=labels_key,
            gene_key=gene_key,
            allow_non_integer=allow_non_integer,
        )
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            GenePanelLayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            fields.CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            fields.CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        if gene_panel_key is not None:
            anndata_fields.append(fields.CategoricalObsField(GENE_PANEL, gene_panel_key))
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def setup_mudata(
        cls,
        mdata,
        rna_layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_key: str | None = None,
        modalities: dict[str, str] | None = None,
        allow_non_integer: bool = False,
        **kwargs,
    ) -> None:
        """Register the RNA modality of a MuData with the model.

        Parameters
        ----------
        mdata
            MuData holding raw RNA counts in one modality.
        rna_layer
            Layer of the RNA modality with raw counts; ``None`` uses its ``X``.
        batch_key, labels_key
            ``obs`` columns, looked up in the modality named in ``modalities``
            (or in ``mdata.obs`` when no modality is given).
        gene_key
            ``var`` column of the RNA modality with stable gene identifiers.
        modalities
            Maps argument names to modality names, e.g. ``{"rna_layer": "rna",
            "batch_key": "rna"}``. ``rna_layer`` is required.
        allow_non_integer
            Accept counts that are not whole numbers (see :meth:`setup_anndata`).

        Examples
        --------
        >>> mdata = mudata.MuData({"rna": adata})
        >>> ExceiverModel.setup_mudata(mdata, modalities={"rna_layer": "rna"})
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if not modalities or "rna_layer" not in modalities:
            raise ValueError(
                "setup_mudata needs modalities={'rna_layer': <name of the RNA modality>}."
            )
        if modalities["rna_layer"] not in mdata.mod:
            raise ValueError(
                f"Modality {modalities['rna_layer']!r} not in the MuData; "
                f"available: {list(mdata.mod)}."
            )
        validate_setup(
            mdata.mod[modalities["rna_layer"]],
            layer=rna_layer,
            gene_key=gene_key,
            allow_non_integer=allow_non_integer,
        )
        for name, key in (("batch_key", batch_key), ("labels_key", labels_key)):
            check_obs_key(_obs_table(mdata, modalities.get(name)), name, key)
        modalities = cls._create_modalities_attr_dict(modalities, setup_method_args)
        mudata_fields = [
            MuDataGenePanelLayerField(
                REGISTRY_KEYS.X_KEY,
                rna_layer,
                mod_key=modalities.rna_layer,
                is_count_data=True,
                mod_required=True,
            ),
            fields.MuDataCategoricalObsField(
                REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=modalities.batch_key
            ),
            fields.MuDataCategoricalObsField(
                REGISTRY_KEYS.LABELS_KEY, labels_key, mod_key=modalities.labels_key
            ),
        ]
        adata_manager = AnnDataManager(fields=mudata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    def _gene_keys(self, adata) -> pd.Index:
        """Gene keys of ``adata`` (its RNA modality for a MuData) by the registered key."""
        return registered_gene_keys(adata, self.registry_["setup_args"])

    def _validate_anndata(self, adata=None, copy_if_view: bool = True):
        """Check the counts, keys and genes of ``adata``, then register it (scvi-tools).

        A view is registered as a copy, so the user's view is left as it is.
        """
        new = adata is not None and adata is not self.adata
        target = self.adata if adata is None else adata
        if target is not None:
            self._check_counts_and_keys(target, warn_empty=new)
        if new and adata.is_view:
            adata = adata.copy()
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    def _check_counts_and_keys(self, adata, warn_empty: bool) -> None:
        setup_args = self.registry_["setup_args"]
        modalities = setup_args.get("modalities") or {}
        rna = adata.mod[modalities["rna_layer"]] if "rna_layer" in modalities else adata
        self._gene_lookup(adata)
        layer = setup_args.get("rna_layer" if "rna_layer" in modalities else "layer")
        check_counts(
            counts_matrix(rna, layer),
            where="adata.X" if layer is None else f"adata.layers[{layer!r}]",
            layers=list(rna.layers),
            allow_non_integer=setup_args.get("allow_non_integer", False),
            warn_empty=warn_empty,
        )
        for name in self._checked_obs_keys:
            check_obs_key(_obs_table(adata, modalities.get(name)), name, setup_args.get(name))

    def save(
        self,
        dir_path: str | Path,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model to a folder, atomically and without pickles.

        Weights go to ``model.safetensors``; the configuration, gene vocabulary,
        scvi-tools registry, training state and a checksum of the weights go to
        ``metadata.json``. The folder is written beside the target and renamed into
        place, so a crash never leaves a half-written model (nor destroys the old one).

        Parameters
        ----------
        dir_path
            Folder to create.
        overwrite
            Replace an existing saved model at ``dir_path``. Without it an existing folder
            raises; a folder that is not a saved model is never replaced.
        save_anndata
            Also write the registered AnnData (``adata.h5ad``) or MuData (``mdata.h5mu``).
        **anndata_write_kwargs
            Passed to the AnnData / MuData ``write`` method.
        """
        _persist.save_model(
            self, dir_path, overwrite=overwrite, save_anndata=save_anndata, **anndata_write_kwargs
        )

    @classmethod
    def load(
        cls,
        dir_path: str | Path,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> ExceiverModel:
        """Load a model saved by :meth:`save`; no pickled code is ever executed.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            AnnData (or MuData) with the model's genes; it is set up with the saved
            setup arguments. ``None`` uses the AnnData saved with the model if any,
            otherwise the model is loaded without data (pass data to its methods).
        accelerator, device
            Where to put the model (scvi-tools conventions).

        Raises
        ------
        ValueError
            A folder that is missing files, was modified after saving (checksum), is
            truncated, or was written by a newer, incompatible scexceiver.
        """
        return _persist.load_model(cls, dir_path, adata, accelerator=accelerator, device=device)

    @staticmethod
    def load_registry(dir_path: str | Path) -> dict:
        """The scvi-tools registry of a model saved by :meth:`save`."""
        return _persist.from_json(_persist.read_metadata(Path(dir_path))["registry"])

    def _var(self, adata) -> pd.DataFrame:
        """``var`` of ``adata``, or of its RNA modality for a MuData."""
        setup_args = self.registry_["setup_args"]
        modality = (setup_args.get("modalities") or {}).get("rna_layer")
        return adata.mod[modality].var if modality is not None else adata.var

    def _gene_lookup(
        self, adata, min_gene_overlap: float | None = None
    ) -> tuple[np.ndarray | None, GeneOverlap]:
        """Vocabulary position of each gene of ``adata`` (``None``: same panel) and overlap."""
        lookup, overlap = self.gene_vocabulary_.align(
            self._gene_keys(adata),
            self._var(adata),
            self.min_gene_overlap if min_gene_overlap is None else min_gene_overlap,
        )
        if lookup is not None:
            logger.info("Aligned the data's genes to the model's vocabulary: %s.", overlap)
        return lookup, overlap

    def _loader_kwargs(self, adata) -> dict:
        """Data loader arguments that map ``adata``'s genes onto the vocabulary."""
        lookup, _ = self._gene_lookup(adata)
        if lookup is None:
            return {}
        return {"gene_lookup": lookup, "n_genes": len(self.gene_vocabulary_)}

    def _measured_genes(self) -> np.ndarray | None:
        """(gene panels, vocabulary) table of measured genes of the training data, or ``None``."""
        key = self.registry_["setup_args"].get("gene_panel_key")
        if key is None:
            return None
        categories = self.adata_manager.get_state_registry(GENE_PANEL).categorical_mapping
        lookup, _ = self._gene_lookup(self.adata)
        measured = measured_table(self.adata, key, categories)
        return to_vocabulary(measured, lookup, len(self.gene_vocabulary_))

    def align_genes(
        self, adata: AnnData | None = None, min_gene_overlap: float | None = None
    ) -> GeneOverlap:
        """Check how the genes of ``adata`` map onto the model's gene vocabulary.

        Genes are matched by the model's gene key (``var_names`` or the ``gene_key``
        column given to :meth:`setup_anndata`), whatever their order. Genes the model does
        not know are not tokens; vocabulary genes the data lacks are treated as
        unmeasured, and library sizes are summed over the shared genes. Every method
        that takes an ``adata`` aligns it this way.

        Parameters
        ----------
        adata
            AnnData (or MuData) with the model's gene key; ``None`` uses the model's.
        min_gene_overlap
            Smallest accepted :attr:`~scexceiver.data.GeneOverlap.fraction` (the share of
            the smaller gene set found in the other); ``None`` uses
            :attr:`min_gene_overlap`.

        Returns
        -------
        scexceiver.data.GeneOverlap
            Counts and fractions of shared genes (also logged).

        Raises
        ------
        ValueError
            Below ``min_gene_overlap``, naming the ``gene_key`` that would match when a
            ``var`` column (e.g. Ensembl IDs instead of symbols) does.
        """
        adata = self.adata if adata is None else adata
        overlap = self._gene_lookup(adata, min_gene_overlap)[1]
        logger.info("Genes against the model's vocabulary: %s.", overlap)
        return overlap

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model: ExceiverModel,
        *,
        freeze_backbone: bool = True,
        min_gene_overlap: float = 0.5,
    ) -> ExceiverModel:
        """A model of new data ``adata`` that starts from a pretrained ``reference_model``.

        scArches-style query mapping for a transformer: the new model has the reference's
        architecture and weights, and a vocabulary that extends the reference's with the
        genes of ``adata`` it does not know (fresh, small embeddings and output biases at the
        gene's mean). Shared genes keep the reference's normalisation statistics, new genes
        get statistics computed on ``adata``; with ``batch_standardise``, so do the
        per-batch input statistics of batches new to the reference (and of data without a
        ``batch_key``), and with ``batch_output_bias`` their output bias starts at their own
        level shifts. The returned model embeds ``adata`` zero-shot
        (no training needed); ``model.train()`` continues masked pretraining on it.

        Parameters
        ----------
        adata
            AnnData of raw counts. If it is not registered with ``setup_anndata`` it is
            registered with the reference's setup arguments (layer, batch, labels, gene key).
        reference_model
            A trained :class:`~scexceiver.ExceiverModel`.
        freeze_backbone
            Continued training updates only the new genes' embeddings and output biases
            (and new batches' embeddings and decoder conditioning); ``False`` trains every
            parameter.
        min_gene_overlap
            Smallest accepted share of the smaller gene set found in the other (see
            :meth:`~scexceiver.ExceiverModel.align_genes`).

        Returns
        -------
        ExceiverModel
            A model on ``adata`` (of the class the method was called on).

        Raises
        ------
        ValueError
            If the reference is untrained or the gene overlap is too small (naming the
            ``gene_key`` that would match).
        """
        return load_query_data(
            cls,
            adata,
            reference_model,
            freeze_backbone=freeze_backbone,
            min_gene_overlap=min_gene_overlap,
        )

    def train(
        self,
        max_epochs: int | None = None,
        *,
        lr: float | None = None,
        weight_decay: float | None = None,
        warmup_steps: int | None = None,
        batch_size: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 10,
        early_stopping_min_delta: float = 1e-5,
        precision: str | None = None,
        seed: int | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every_n_epochs: int = 1,
        resume_from: str | None = None,
        length_bucketing: bool = False,
        chunked: bool | None = None,
        compile: bool = False,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Pretrain with masked expression prediction.

        Gene statistics (normalisation) and ``n_mask`` are fitted on the training cells
        the first time the model trains, in one streaming sparse pass; later calls
        continue training with them. Validation uses a fixed mask and drives early
        stopping. With ``neighbour_preservation``, each training cell's 15 nearest cells
        are first found in its standardised input (cosine of 50 principal components,
        :func:`~scexceiver.data.nearest_cells`), and the training minibatches are made
        of neighbourhoods of 4 (:class:`~scexceiver.data.NeighbourhoodSampler`; under
        DDP each rank visits its own share of the cells; with ``length_bucketing``,
        batched by length), so the loss finds each cell's nearest cells in its
        minibatch. With chunked reading, the neighbourhoods are found anew in each
        window of blocks, among its own cells
        (:class:`~scexceiver.data.ChunkNeighbourhoodSampler`).

        Parameters
        ----------
        max_epochs
            Maximum number of epochs; ``None`` picks ``clip(400_000 / n_cells, 10,
            400)``, about 400,000 cells seen, at most 400 epochs (scVI's cap) for small
            datasets (docs/quality.md: 200 epochs left 200 cells under-trained).
        lr, weight_decay, warmup_steps, batch_size
            Optimisation; ``None`` uses the preset's defaults (paper: 3e-4, 1e-5, 500,
            64; default: 1e-3, 1e-5, 100, 64).
        accelerator, devices
            Lightning accelerator and devices (``"auto"``: a GPU when present).
        train_size, validation_size
            Fractions of cells for training and validation (seeded by
            ``scvi.settings.seed``).
        early_stopping
            Stop when the validation loss has not improved by ``early_stopping_min_delta``
            for ``early_stopping_patience`` epochs. Off by default, as in scvi-tools: on
            small datasets the validation loss turns up (the reconstruction over-fits the
            few training cells) long before the embedding stops improving (Wu 2020's 200
            cells: validation loss lowest at epochs 142 and 176, kNN macro-F1 still rising
            to epoch 260; docs/quality.md).
        precision
            Lightning precision; ``None`` uses ``"bf16-mixed"`` on a GPU and 32-bit
            otherwise.
        seed
            Sets ``scvi.settings.seed`` (the train/validation split, shuffling and
            training masks) before training; two CPU runs with the same seed from the
            same initial weights are bit-identical. ``None`` keeps the current seed.
        checkpoint_dir
            Directory for full training checkpoints (weights, optimiser, scheduler, loop
            and RNG states; see :class:`~scexceiver.train.PeriodicCheckpoint`).
        checkpoint_every_n_epochs
            Epochs between checkpoints.
        resume_from
            Checkpoint to resume training from: a ``.ckpt`` path, or ``"last"`` for the
            latest one in ``checkpoint_dir``. With the same seed, data and
            ``max_epochs``, the resumed run ends with the weights of an uninterrupted
            one.
        length_bucketing
            Batch training cells with similar numbers of expressed genes together, so
            less of each batch is padding (:class:`~scexceiver.data.LengthGroupedSampler`).
        chunked
            Shuffle training cells in chunks: the order of contiguous blocks of rows is
            shuffled and cells are shuffled within a window of a few blocks
            (:class:`~scexceiver.data.ChunkShuffleSampler`), so each minibatch is read as
            a few contiguous slices instead of one random read per cell; every training
            cell still comes once per epoch, seeded by ``seed``, and under DDP each rank
            reads its own shard. ``None``: on for a backed AnnData (unless
            ``length_bucketing``), off in memory. Tune it with ``datasplitter_kwargs=
            {"chunk_size": 256, "window_chunks": 8}`` (rows per block, blocks shuffled
            together; about ``2 x window_chunks x chunk_size`` rows are held in memory).
        compile
            Compile the network with :func:`torch.compile` (dynamic shapes) before
            training; it stays compiled for inference. The first steps are slower while
            it compiles; measured 1.16x faster training steps on a 2-core CPU
            (``benchmarks/speed.py --sections compile``).
        plan_kwargs
            Extra arguments of :class:`~scexceiver.train.ExceiverTrainingPlan`.
        datasplitter_kwargs
            Extra arguments of the data splitter, e.g. ``num_workers`` (loader processes)
            or ``pin_memory`` (on by default when training on a GPU).
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / Lightning's ``Trainer``, e.g.
            ``strategy="ddp"`` with ``devices=4`` (GPUs per node) and ``num_nodes=2``
            (each rank trains on its own shard of every epoch; see the scaling guide).
        """
        self._validate_anndata()
        neighbourhoods = self.module.neighbour_preservation > 0
        if chunked is None:
            chunked = bool(self.adata.isbacked) and not length_bucketing
        if chunked and length_bucketing:
            raise ValueError(
                "length_bucketing=True cannot be combined with chunked=True; pass one of them."
            )
        distributed = use_distributed_sampler(trainer_kwargs.get("strategy"))
        if (chunked or neighbourhoods) and distributed:
            # these samplers shard the ranks themselves; Lightning must not replace them
            trainer_kwargs.setdefault("use_distributed_sampler", False)
        if compile:
            self.module.network.compile(dynamic=True)
        if seed is not None:
            scvi.settings.seed = seed
        ckpt_path = resolve_resume(resume_from, checkpoint_dir)
        defaults = TRAINING[self.preset]
        plan_kwargs = {
            "lr": defaults["lr"] if lr is None else lr,
            "weight_decay": defaults["weight_decay"] if weight_decay is None else weight_decay,
            "warmup_steps": defaults["warmup_steps"] if warmup_steps is None else warmup_steps,
            **(plan_kwargs or {}),
        }
        batch_size = batch_size or defaults["batch_size"]
        if neighbourhoods and length_bucketing and batch_size % _NEIGHBOURHOOD_SIZE:
            raise ValueError(
                f"length_bucketing batches whole neighbourhoods of {_NEIGHBOURHOOD_SIZE} "
                f"cells (neighbour_preservation), so batch_size must be a multiple of "
                f"{_NEIGHBOURHOOD_SIZE}; got {batch_size}."
            )
        if max_epochs is None:
            max_epochs = default_max_epochs(self.adata.n_obs)
        if precision is None:
            precision = "bf16-mixed" if _uses_gpu(accelerator) else "32-true"
        datasplitter_kwargs = {
            "pin_memory": _uses_gpu(accelerator),
            "length_bucketing": length_bucketing,
            "chunked": chunked,
            "measured_genes": self._measured_genes(),
            **(datasplitter_kwargs or {}),
        }
        datamodule = self._data_splitter_cls(
            self.adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size,
            distributed_sampler=distributed,
            **self._loader_kwargs(self.adata),
            **datasplitter_kwargs,
        )
        datamodule.setup()
        if len(datamodule.val_idx) == 0 and early_stopping:
            warnings.warn(
                f"No validation cells ({self.adata.n_obs} cells, train_size={train_size}): "
                "early stopping is off. Train on more cells or pass early_stopping=False.",
                UserWarning,
                stacklevel=2,
            )
            early_stopping = False
        if not self.module.is_fitted:
            self._fit_statistics(datamodule.train_idx)
        if neighbourhoods:
            datamodule.data_loader_kwargs.update(
                self._input_neighbourhoods(datamodule.train_idx, chunked),
                neighbourhood_size=_NEIGHBOURHOOD_SIZE,
            )
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        trainer_kwargs.setdefault("gradient_clip_val", 1.0)
        if checkpoint_dir is not None:
            callback = PeriodicCheckpoint(checkpoint_dir, checkpoint_every_n_epochs)
            trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), callback]
        if ckpt_path is not None:
            trainer_kwargs["ckpt_path"] = ckpt_path
        result = super().train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            early_stopping_min_delta=early_stopping_min_delta,
            plan_kwargs=plan_kwargs,
            datamodule=datamodule,
            precision=precision,
            **trainer_kwargs,
        )
        restore_frozen = getattr(self, "_restore_frozen", None)
        if restore_frozen is not None:
            restore_frozen()
        return result

    def _fit_statistics(self, train_idx: np.ndarray) -> None:
        stats = self._vocabulary_statistics(train_idx)
        batch_stats = (
            self._batch_statistics(train_idx) if self.module.needs_batch_statistics else None
        )
        self.module.fit_statistics(stats, batch_stats)
        logger.info(
            "Fitted gene statistics on %d training cells; median detected genes %.0f, n_mask %d.",
            stats.n_cells,
            stats.median_detected,
            int(self.module.n_mask),
        )

    @torch.inference_mode()
    def _input_neighbourhoods(self, cells: np.ndarray, chunked: bool) -> dict[str, np.ndarray]:
        """Loader arguments that batch ``cells`` in neighbourhoods of their input.

        Cells are compared by the cosine of the principal components of their
        standardised input (:meth:`~scexceiver.module.ExceiverModule.standardised_input`):
        in memory, each cell's nearest cells among all ``cells`` (``neighbourhoods``);
        with chunked reading, the components themselves (``neighbourhood_scores``), from
        which each window of blocks finds its cells' nearest cells among its own.
        """
        loader = self._make_data_loader(
            adata=self.adata,
            indices=cells,
            measured_genes=self._measured_genes(),
            **self._loader_kwargs(self.adata),
        )
        device = self.module.device

        def chunks():
            for tensors in loader:
                tensors = {key: value.to(device) for key, value in tensors.items()}
                yield self.module.standardised_input(tensors).float().cpu().numpy()

        start = time.perf_counter()
        seed = scvi.settings.seed
        scores = principal_scores(chunks, len(cells), seed=seed)
        if chunked:
            found = {"neighbourhood_scores": scores}
        else:
            k = min(_INPUT_NEIGHBOURS, len(cells) - 1)
            found = {"neighbourhoods": cosine_neighbours(scores, k, seed)}
        logger.info(
            "Compared %d training cells' input (%s) in %.1f s.",
            len(cells),
            "neighbours found within windows" if chunked else f"{k} nearest cells each",
            time.perf_counter() - start,
        )
        return found

    def _vocabulary_statistics(self, cells: np.ndarray) -> GeneStatistics:
        """Gene statistics of the registered AnnData's ``cells``, on the vocabulary."""
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        lookup, _ = self._gene_lookup(self.adata)
        panels = None
        key = self.registry_["setup_args"].get("gene_panel_key")
        if key is not None:
            codes = self.adata_manager.get_from_registry(GENE_PANEL)
            categories = self.adata_manager.get_state_registry(GENE_PANEL).categorical_mapping
            panels = (np.asarray(codes).ravel(), measured_table(self.adata, key, categories))
        if lookup is None:
            return gene_statistics(counts, cells, panels=panels)
        genes = np.flatnonzero(lookup >= 0)
        return gene_statistics(counts, cells, genes=genes, panels=panels).to_vocabulary(
            lookup[genes], len(self.gene_vocabulary_)
        )

    def _batch_statistics(self, cells: np.ndarray) -> list[GeneStatistics]:
        """Gene statistics of each batch's share of ``cells``, one per batch code.

        Raises
        ------
        ValueError
            If a batch has none of ``cells``.
        """
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY))
        codes = codes.ravel()[cells]
        n_batch = self.summary_stats.n_batch
        missing = sorted(set(range(n_batch)) - set(codes.tolist()))
        if missing:
            names = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
            raise ValueError(
                "batch_standardise and batch_output_bias need training cells of every "
                "batch; none of "
                f"{[str(names.categorical_mapping[i]) for i in missing]} is among them. "
                "Use a larger train_size or drop those batches."
            )
        return [self._vocabulary_statistics(cells[codes == b]) for b in range(n_batch)]

    def _inference_loader(self, adata, indices, batch_size):
        """Validated ``adata`` and a data loader over it, with the module in eval mode."""
        if not self.module.is_fitted:
            raise RuntimeError(
                "The model has no gene statistics yet: call model.train() first "
                "(or load a trained model with ExceiverModel.load)."
            )
        adata = self._validate_anndata(adata)
        self.module.eval()
        loader = self._make_data_loader(
            adata=adata, indices=indices, batch_size=batch_size, **self._loader_kwargs(adata)
        )
        return adata, loader

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Cell embeddings: the latents after the transformer layers.

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to embed; all by default.
        batch_size
            Minibatch size; ``None`` uses scvi-tools' default.

        Returns
        -------
        numpy.ndarray
            (cells, K x dim) for ``readout="flatten"`` (the paper), (cells, dim) for
            ``readout="mean"``. Write it to ``adata.obsm`` yourself.
        """
        _, loader = self._inference_loader(adata, indices, batch_size)
        out = []
        for tensors in loader:
            inference_inputs = self.module._get_inference_input(tensors)
            latents = self.module.inference(**inference_inputs, masking=False)["latents"]
            out.append(self.module.embed(latents).float().cpu())
        return require_finite(torch.cat(out).numpy(), "embeddings")

    def get_gene_embeddings(self, adata: AnnData | None = None) -> np.ndarray:
        """Gene embeddings (rows of the gene table), aligned with ``adata.var``.

        With untied tables (``tie_gene_embeddings=False``; the default preset's with
        batches), the decoder's table: its gene queries, shaped by reconstruction alone.

        Parameters
        ----------
        adata
            AnnData whose genes to look up by the model's gene key (``var_names`` or the
            ``gene_key`` column); ``None`` uses the model's. Genes missing from the
            model's vocabulary get rows of NaN.

        Returns
        -------
        numpy.ndarray
            (genes, dim) float32. Write it to ``adata.varm`` yourself.
        """
        table = self.module.network.gene_embedding.weight.detach().float().cpu().numpy()
        if adata is None:
            return table[: len(self.gene_vocabulary_)].copy()
        positions = self.gene_vocabulary_.positions(self._gene_keys(adata))
        out = np.full((positions.size, table.shape[1]), np.nan, dtype=np.float32)
        found = positions >= 0
        out[found] = table[positions[found]]
        return out

    @torch.inference_mode()
    def predict_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Decoder reconstruction of processed expression from each cell's latents.

        Every gene of ``gene_list`` is queried for every cell from the unmasked
        encoding, as "may be zero" (whole-cell reconstruction in the default preset).

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells; all by default.
        gene_list
            Gene keys to predict; all genes by default (memory grows with cells x genes).
        batch_size
            Minibatch size.

        Returns
        -------
        pandas.DataFrame
            Cells x genes predicted processed values (z-scored log CP10k + 1).
        """
        adata, loader = self._inference_loader(adata, indices, batch_size)
        keys = list(self.gene_vocabulary_.keys) if gene_list is None else list(gene_list)
        positions = self.gene_vocabulary_.positions(keys)
        if (positions < 0).any():
            missing = [k for k, p in zip(keys, positions, strict=True) if p < 0]
            raise ValueError(f"Genes not in the model's vocabulary: {missing[:10]}.")
        query = torch.as_tensor(positions, dtype=torch.long)
        rows = [self.module.sample(tensors, query).float().cpu() for tensors in loader]
        obs_names = adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]
        values = require_finite(torch.cat(rows).numpy(), "predicted values")
        return pd.DataFrame(values, index=obs_names, columns=keys)

    @torch.inference_mode()
    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> dict[str, float]:
        """Masked-gene MSE of the model and of predicting each gene's mean, same masks.

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to evaluate, e.g. ``model.validation_indices``.
        batch_size
            Minibatch size.
        seed
            Seed of the fixed masks.

        Returns
        -------
        dict
            ``masked_mse`` of the model, ``gene_mean_mse`` of a baseline predicting each
            masked gene's mean processed value over training cells where it is detected
            (where the model's output bias starts), both in processed (per-gene
            standardised) units; ``masked_mse_log`` and ``gene_mean_mse_log``, the same
            errors in ``log1p(CP10k)`` units (each gene's squared error times its
            variance), where highly variable genes count most; and ``n_masked`` genes
            scored.
        """
        _, loader = self._inference_loader(adata, indices, batch_size)
        device = next(self.module.parameters()).device
        sums = dict.fromkeys(("model", "mean", "model_log", "mean_log"), 0.0)
        n = 0.0
        baseline = self.module.gene_expressed_mean
        variance = self.module.normalizer.std.square()
        for i, tensors in enumerate(loader):
            generator = torch.Generator(device=device).manual_seed(seed + i)
            inference_outputs, generative_outputs = self.module(
                tensors, inference_kwargs={"generator": generator}, compute_loss=False
            )
            masked = inference_outputs["query_masked"]
            genes = inference_outputs["query_idx"][masked]
            target = inference_outputs["target"][masked]
            errors = {
                "model": (generative_outputs["prediction"].float()[masked] - target) ** 2,
                "mean": (baseline[genes] - target) ** 2,
            }
            for name, sq_err in errors.items():
                sums[name] += float(sq_err.sum())
                sums[f"{name}_log"] += float((sq_err * variance[genes]).sum())
            n += float(masked.sum())
        return {
            "masked_mse": sums["model"] / n,
            "gene_mean_mse": sums["mean"] / n,
            "masked_mse_log": sums["model_log"] / n,
            "gene_mean_mse_log": sums["mean_log"] / n,
            "n_masked": int(n),
        }


def _obs_table(adata, modality: str | None) -> pd.DataFrame:
    """``obs`` of a modality of a MuData, or of ``adata`` itself."""
    return adata.mod[modality].obs if modality is not None else adata.obs


def _uses_gpu(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()
