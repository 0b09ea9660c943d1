"""The dataset names recipes use in ``data.dataset``, in a module without heavy imports, so that the
command line can offer them as choices without loading torch (``metrictransfer --help``).
:data:`metrictransfer.data.registry.DATASETS` builds each of them; a test keeps the two equal."""

DATASET_NAMES = ("glyphs", "cub", "cars", "sop", "inshop", "folder", "csv", "unlabelled")
