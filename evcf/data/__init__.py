"""Raw ratings in, the processed split out: download and check an archive (download.py), read it
(readers/), binarise, filter and split it as the reference does (split.py), load a split for
training (sparse.py); synthetic data (synthetic.py) and the bench's data shapes (shapes.py)."""

__all__ = ["SPLIT_FILES"]

# the processed files a run reads (stats.json holds the sizes the loader uses): the one list of the
# processed split's files.  Their bytes are the split's fingerprint in a run's identity
# (evcf.identity.split_fingerprint); the split step writes them and unique_uid.txt, which no run
# reads (evcf.data.split.SPLIT_OUTPUTS, the outputs of the workflow's split rule)
SPLIT_FILES = ("train.csv", "validation_tr.csv", "validation_te.csv", "test_tr.csv", "test_te.csv",
               "unique_sid.txt", "stats.json")
