import numpy as np
import pytest
from anndata import AnnData

from scexceiver._write import store


def test_store_refuses_to_overwrite_then_overwrites_when_asked():
    adata = AnnData(np.ones((3, 2), dtype=np.float32))
    store(adata, "obsm", "X_e", np.zeros((3, 4)))
    with pytest.raises(KeyError, match="overwrite=True"):
        store(adata, "obsm", "X_e", np.ones((3, 4)))
    np.testing.assert_array_equal(adata.obsm["X_e"], 0.0)
    store(adata, "obsm", "X_e", np.ones((3, 4)), overwrite=True)
    np.testing.assert_array_equal(adata.obsm["X_e"], 1.0)
