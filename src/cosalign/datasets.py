"""The dataset layouts cosalign reads, by name: the choices of a domain's ``dataset`` in the
config and the readers' dispatch in ``cosalign.data``, which both import it from here (so
neither imports the other for it)."""

DATASETS = ("gta5", "synthia", "cityscapes", "acdc", "darkzurich", "folder")
