# Windows (ivmpi/win.py): the memory fence of Win.Sync and of the ends of
# epochs (included by _fastcopy.pyx).

cdef extern from *:
    """
    static inline void ivmpi_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    """
    void ivmpi_full_fence() nogil


def memory_fence():
    """A full memory barrier: this thread's earlier loads and stores (to the
    region too) are ordered before its later ones, for every other core and VM."""
    ivmpi_full_fence()
