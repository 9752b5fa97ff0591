"""Fuzzing: random AnnData objects through setup, one training step and embedding.

Each generated AnnData must either be refused by our validation (a ValueError /
TypeError raised from :mod:`scexceiver.data._validate` or the gene vocabulary, exactly
when the input is bad) or give finite embeddings of the right shape.

Profiles: ``ci`` (default; fixed examples, derandomised) and ``long`` for local runs:
``HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py``.
"""

import os
import traceback
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scvi
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import sparse

from scexceiver import ExceiverModel

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY = {"n_latents": 4, "dim": 8, "n_layers": 1, "ff_dim": 16, "head_hidden": 8, "heads": 2}
DTYPES = [np.int32, np.int64, np.float16, np.float32, np.float64]
#: Half of the examples are valid counts; the other half carry one defect each.
CORRUPTIONS = ["none"] * 5 + ["negative", "nan", "inf", "fraction", "duplicate_names"]
OUR_CHECKS = ("scexceiver/data/_validate.py", "scexceiver/data/_vocab.py")


@st.composite
def anndatas(draw):
    """A small AnnData of counts in a random layout, possibly corrupted in one way."""
    n_cells = draw(st.integers(1, 12))
    n_genes = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    density = draw(st.sampled_from([1.0, 0.3, 0.05]))
    counts = rng.poisson(draw(st.sampled_from([3.0, 200.0, 0.5])), (n_cells, n_genes))
    counts = counts * (rng.random((n_cells, n_genes)) < density)
    if n_cells > 1 and draw(st.booleans()):
        counts[rng.integers(n_cells)] = 0  # an empty cell
    if n_genes > 1 and draw(st.booleans()):
        counts[:, rng.integers(n_genes)] = 0  # an empty gene
    corruption = draw(st.sampled_from(CORRUPTIONS))
    layout = draw(st.sampled_from(["csr", "csc", "dense"]))
    dtypes = [d for d in DTYPES if layout == "dense" or d != np.float16]  # scipy: no float16
    if corruption in ("nan", "inf", "fraction"):
        dtypes = [d for d in dtypes if np.issubdtype(d, np.floating)]
    dtype = draw(st.sampled_from(dtypes))
    x = counts.astype(dtype)
    cell, gene = rng.integers(n_cells), rng.integers(n_genes)
    if corruption == "negative":
        x[cell, gene] = -1
    elif corruption in ("nan", "inf"):
        x[cell, gene] = np.nan if corruption == "nan" else np.inf
    elif corruption == "fraction":
        x[cell, gene] = 1.5
    names = draw(
        st.lists(st.text(min_size=1, max_size=4), min_size=n_genes, max_size=n_genes, unique=True)
    )
    if corruption == "duplicate_names" and n_genes > 1:
        names[-1] = names[0]
    matrix = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[layout]
    obs = pd.DataFrame(
        {"batch": rng.choice(["a", "b"], n_cells)}, index=[f"c{i}" for i in range(n_cells)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata warns about duplicate names
        adata = ad.AnnData(matrix(x), obs=obs, var=pd.DataFrame(index=names))
    bad = corruption != "none" and not (corruption == "duplicate_names" and n_genes == 1)
    bad = bad or not np.any(counts)
    return adata, bad, draw(st.booleans())


@given(case=anndatas())
@settings(PROFILE)
def test_random_anndata_is_refused_clearly_or_embedded(case):
    adata, bad, use_batch = case
    scvi.settings.seed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ExceiverModel.setup_anndata(adata, batch_key="batch" if use_batch else None)
        except (ValueError, TypeError) as err:
            origin = traceback.extract_tb(err.__traceback__)[-1].filename
            assert origin.endswith(OUR_CHECKS), (origin, err)
            assert bad, f"valid input refused: {err}"
            event(f"refused: {str(err).split(';')[0][:40]}")
            return
        assert not bad, "bad input accepted"
        model = ExceiverModel(adata, **TINY)
        model.train(max_steps=1, batch_size=4, early_stopping=False, enable_progress_bar=False)
        z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 4 * 8)
    assert np.isfinite(z).all()
    event("embedded")
