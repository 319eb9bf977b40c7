/* The scan of a rank's head array (ivmpi/_inbox.pxi, docs/layout.md "Head
 * arrays"): the first sender s in [start, stop) whose head word differs from
 * this rank's private tail copy and whose ring is attached (rings[s] != NULL;
 * never the diagonal word), or -1.
 *
 * Whole groups of eight words (a cache line when aligned) are tested at
 * once, so an idle line costs a few instructions and only a line with a
 * change is looked at word by word.  On x86-64 a group is read with four
 * 16-byte aligned loads, as the copy core reads payloads (layout.md allows
 * those widths there); elsewhere, and in the tracing build, with 8-byte
 * loads through the copy core's accessors.  Either way the words are only
 * hints: the ring's poll() loads and checks the head before any use.
 */
#ifndef IVMPI_INBOX_H
#define IVMPI_INBOX_H

#include <stdint.h>
#include "_copycore.h"

#if defined(__x86_64__) && defined(__SSE2__) && !defined(IVMPI_TRACE_ACCESS)
#include <emmintrin.h>
#define IVMPI_INBOX_SSE2 1
#endif

static inline int ivmpi_inbox_group_idle(const char *heads, const uint64_t *tails, int s)
{
#ifdef IVMPI_INBOX_SSE2
    if ((s & 1) == 0) {
        /* The head array starts on a 64-byte boundary: an even s is 16-byte
         * aligned.  Volatile: every scan must load the words afresh. */
        const volatile __m128i *h = (const volatile __m128i *)(heads + 8 * (intptr_t)s);
        const __m128i *t = (const __m128i *)(tails + s);
        __m128i d = _mm_or_si128(
            _mm_or_si128(_mm_xor_si128(h[0], _mm_loadu_si128(t)),
                         _mm_xor_si128(h[1], _mm_loadu_si128(t + 1))),
            _mm_or_si128(_mm_xor_si128(h[2], _mm_loadu_si128(t + 2)),
                         _mm_xor_si128(h[3], _mm_loadu_si128(t + 3))));
        return _mm_movemask_epi8(_mm_cmpeq_epi8(d, _mm_setzero_si128())) == 0xffff;
    }
#endif
    const char *h = heads + 8 * (intptr_t)s;
    const uint64_t *t = tails + s;
    return ((ivmpi_load_u64(h) ^ t[0]) | (ivmpi_load_u64(h + 8) ^ t[1])
            | (ivmpi_load_u64(h + 16) ^ t[2]) | (ivmpi_load_u64(h + 24) ^ t[3])
            | (ivmpi_load_u64(h + 32) ^ t[4]) | (ivmpi_load_u64(h + 40) ^ t[5])
            | (ivmpi_load_u64(h + 48) ^ t[6]) | (ivmpi_load_u64(h + 56) ^ t[7])) == 0;
}

static inline int ivmpi_inbox_pending(const char *heads, const uint64_t *tails,
                                      const void *ring_table, int start, int stop)
{
    void *const *rings = (void *const *)ring_table;    /* PyObject *[nranks] */
    int s = start;
    while (s < stop) {
        if (s + 8 <= stop && ivmpi_inbox_group_idle(heads, tails, s)) {
            s += 8;
            continue;
        }
        int end = s + 8 < stop ? s + 8 : stop;
        for (; s < end; s++) {
            if (ivmpi_load_u64(heads + 8 * (intptr_t)s) != tails[s] && rings[s] != 0)
                return s;
        }
    }
    return -1;
}

#endif
