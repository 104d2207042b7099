"""TFRecords from the dataset adapters: the Beam build (``python -m cxr_tfp.records.build``)."""
