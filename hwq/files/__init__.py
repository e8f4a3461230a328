"""Files hwq writes: atomic writes (``atomic``), the generic HDF5 encoding (``h5io``), compiled
programs (``program``, ``.hwq``) and attack results (``results``)."""
