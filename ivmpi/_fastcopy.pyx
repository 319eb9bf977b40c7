# cython: language_level=3
# Placeholder: replaced by the real copy core.
include "_ring.pxi"
