/*
 * The copy core: every access ivmpi makes to the shared region goes through
 * these functions.
 *
 * Why not memcpy: ARM64 guests map the ivshmem BAR as Device memory, where
 * unaligned loads/stores and `dc zva` (used by glibc's memset/memcpy) raise
 * alignment faults, and exclusive load/store pairs (compare-and-swap) are not
 * guaranteed to work.  In strict mode the region side is therefore touched
 * only with naturally aligned 8-byte accesses, plus 4/2/1-byte accesses for
 * a head and a tail; the private side may be unaligned (it is normal memory).
 * On x86-64 the body uses naturally aligned 16-byte SSE2 accesses instead
 * (x86 allows any aligned access width on any memory type, and the wider
 * access is what brings strict copies up to memcpy's speed).
 * The region pointer is accessed through `volatile` so the compiler cannot
 * merge or vectorise those accesses into wider, unaligned ones.
 *
 * Built with IVMPI_TRACE_ACCESS, every region access is also recorded
 * (address, width) so that a test can prove the rule holds.
 */
#ifndef IVMPI_COPYCORE_H
#define IVMPI_COPYCORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define IVMPI_VECTOR16 1
#else
#define IVMPI_VECTOR16 0
#endif

#ifdef IVMPI_TRACE_ACCESS
/* Recording is for tests only: a fixed buffer, overflow counted, not stored. */
#define IVMPI_TRACE_CAP (1u << 20)
static uintptr_t ivmpi_trace_addr[IVMPI_TRACE_CAP];
static uint8_t ivmpi_trace_width[IVMPI_TRACE_CAP];
static size_t ivmpi_trace_len = 0;
static size_t ivmpi_trace_total = 0;
static inline void ivmpi_trace(const volatile void *p, unsigned width) {
    if (ivmpi_trace_len < IVMPI_TRACE_CAP) {
        ivmpi_trace_addr[ivmpi_trace_len] = (uintptr_t)p;
        ivmpi_trace_width[ivmpi_trace_len] = (uint8_t)width;
        ivmpi_trace_len++;
    }
    ivmpi_trace_total++;
}
#define IVMPI_TRACE(p, w) ivmpi_trace((p), (w))
#else
#define IVMPI_TRACE(p, w) ((void)0)
#endif

/* A hint to the CPU that we are spinning (pause / yield). */
static inline void ivmpi_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

/* 64-bit words of the region: p must be 8-byte aligned (callers check). */
static inline uint64_t ivmpi_load_acquire_u64(const void *p) {
    IVMPI_TRACE(p, 8);
    return __atomic_load_n((const volatile uint64_t *)p, __ATOMIC_ACQUIRE);
}
static inline void ivmpi_store_release_u64(void *p, uint64_t v) {
    IVMPI_TRACE(p, 8);
    __atomic_store_n((volatile uint64_t *)p, v, __ATOMIC_RELEASE);
}
/* A full fence: stores before it (the kernel's too, made in a system call
 * on this thread) are seen by other cores before stores after it. */
static inline void ivmpi_fence(void) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static inline uint64_t ivmpi_load_u64(const void *p) {
    IVMPI_TRACE(p, 8);
    return *(const volatile uint64_t *)p;
}
static inline void ivmpi_store_u64(void *p, uint64_t v) {
    IVMPI_TRACE(p, 8);
    *(volatile uint64_t *)p = v;
}

/* Stores of data the other side reads next (a gather into the region).
 * The line is most likely still in the reader's cache from the last
 * message, so a plain store must first take it back from there (one
 * cross-core round trip per line); a non-temporal store on x86-64 writes
 * the line without owning it first, which made a 128 KiB strided gather
 * into the region 2.3x faster on the machines measured (docs/performance.md).
 * Non-temporal stores are weakly ordered: ivmpi_stream_fence() must follow
 * them before anything that publishes the data.  Elsewhere a plain store. */
static inline void ivmpi_stream_u64(void *p, uint64_t v) {
    IVMPI_TRACE(p, 8);
#if IVMPI_VECTOR16
    _mm_stream_si64((long long *)p, (long long)v);
#else
    *(volatile uint64_t *)p = v;
#endif
}
static inline void ivmpi_stream_fence(void) {
#if IVMPI_VECTOR16
    _mm_sfence();
#endif
}

/* A copy into the region of data a peer reads next, not strict mode: the
 * 16-byte-aligned body by non-temporal stores on x86-64 (ivmpi_stream_u64
 * says why), fenced, so it is ready to publish on return. */
static inline void ivmpi_stream_to_region(void *region_dst, const void *src, size_t n) {
    IVMPI_TRACE(region_dst, 0);
#if IVMPI_VECTOR16
    char *d = (char *)region_dst;
    const char *s = (const char *)src;
    size_t lead = (16 - ((uintptr_t)d & 15)) & 15;
    if (lead > n)
        lead = n;
    memcpy(d, s, lead);
    d += lead; s += lead; n -= lead;
    while (n >= 64) {
        __m128i v0 = _mm_loadu_si128((const __m128i *)s);
        __m128i v1 = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i v2 = _mm_loadu_si128((const __m128i *)(s + 32));
        __m128i v3 = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, v0);
        _mm_stream_si128((__m128i *)(d + 16), v1);
        _mm_stream_si128((__m128i *)(d + 32), v2);
        _mm_stream_si128((__m128i *)(d + 48), v3);
        d += 64; s += 64; n -= 64;
    }
    while (n >= 16) {
        _mm_stream_si128((__m128i *)d, _mm_loadu_si128((const __m128i *)s));
        d += 16; s += 16; n -= 16;
    }
    memcpy(d, s, n);
    _mm_sfence();
#else
    memcpy(region_dst, src, n);
#endif
}

/* 32-bit device registers (ivshmem BAR0 allows only 32-bit accesses):
 * p must be 4-byte aligned (callers check). */
static inline uint32_t ivmpi_load_u32(const void *p) {
    IVMPI_TRACE(p, 4);
    return *(const volatile uint32_t *)p;
}
static inline void ivmpi_store_u32(void *p, uint32_t v) {
    IVMPI_TRACE(p, 4);
    *(volatile uint32_t *)p = v;
}

/* Strict copy into the region: aligned stores only on the region side. */
static inline void ivmpi_copy_to_region_strict(void *region_dst, const void *src, size_t n) {
    char *d = (char *)region_dst;
    const char *s = (const char *)src;
    if (n && ((uintptr_t)d & 1)) {
        IVMPI_TRACE(d, 1);
        *(volatile uint8_t *)d = *(const uint8_t *)s;
        d += 1; s += 1; n -= 1;
    }
    if (n >= 2 && ((uintptr_t)d & 2)) {
        uint16_t v; memcpy(&v, s, 2);
        IVMPI_TRACE(d, 2);
        *(volatile uint16_t *)d = v;
        d += 2; s += 2; n -= 2;
    }
    if (n >= 4 && ((uintptr_t)d & 4)) {
        uint32_t v; memcpy(&v, s, 4);
        IVMPI_TRACE(d, 4);
        *(volatile uint32_t *)d = v;
        d += 4; s += 4; n -= 4;
    }
    /* d is now 8-byte aligned whenever n >= 8 remains (each step above ran
     * only if its bit was set and enough bytes were left). */
#if IVMPI_VECTOR16
    if (n >= 16) {
        if ((uintptr_t)d & 8) {
            uint64_t v; memcpy(&v, s, 8);
            IVMPI_TRACE(d, 8);
            *(volatile uint64_t *)d = v;
            d += 8; s += 8; n -= 8;
        }
        volatile __m128i *dv = (volatile __m128i *)d;
        while (n >= 64) {
            __m128i v0 = _mm_loadu_si128((const __m128i *)s);
            __m128i v1 = _mm_loadu_si128((const __m128i *)(s + 16));
            __m128i v2 = _mm_loadu_si128((const __m128i *)(s + 32));
            __m128i v3 = _mm_loadu_si128((const __m128i *)(s + 48));
            IVMPI_TRACE(dv, 16); IVMPI_TRACE(dv + 1, 16);
            IVMPI_TRACE(dv + 2, 16); IVMPI_TRACE(dv + 3, 16);
            dv[0] = v0; dv[1] = v1; dv[2] = v2; dv[3] = v3;
            dv += 4; s += 64; n -= 64;
        }
        while (n >= 16) {
            IVMPI_TRACE(dv, 16);
            *dv++ = _mm_loadu_si128((const __m128i *)s);
            s += 16; n -= 16;
        }
        d = (char *)dv;
    }
#endif
    volatile uint64_t *dw = (volatile uint64_t *)d;
    /* Four words per iteration: loads first, then the stores, which lets
     * the CPU overlap them (about 2x faster than one word per iteration on
     * the machines measured, see ivmpi/copybench.py). */
    while (n >= 32) {
        uint64_t v0, v1, v2, v3;
        memcpy(&v0, s, 8); memcpy(&v1, s + 8, 8);
        memcpy(&v2, s + 16, 8); memcpy(&v3, s + 24, 8);
        IVMPI_TRACE(dw, 8); IVMPI_TRACE(dw + 1, 8);
        IVMPI_TRACE(dw + 2, 8); IVMPI_TRACE(dw + 3, 8);
        dw[0] = v0; dw[1] = v1; dw[2] = v2; dw[3] = v3;
        dw += 4; s += 32; n -= 32;
    }
    while (n >= 8) {
        uint64_t v; memcpy(&v, s, 8);
        IVMPI_TRACE(dw, 8);
        *dw++ = v;
        s += 8; n -= 8;
    }
    d = (char *)dw;
    if (n >= 4) {
        uint32_t v; memcpy(&v, s, 4);
        IVMPI_TRACE(d, 4);
        *(volatile uint32_t *)d = v;
        d += 4; s += 4; n -= 4;
    }
    if (n >= 2) {
        uint16_t v; memcpy(&v, s, 2);
        IVMPI_TRACE(d, 2);
        *(volatile uint16_t *)d = v;
        d += 2; s += 2; n -= 2;
    }
    if (n) {
        IVMPI_TRACE(d, 1);
        *(volatile uint8_t *)d = *(const uint8_t *)s;
    }
}

/* Strict copy out of the region: aligned loads only on the region side. */
static inline void ivmpi_copy_from_region_strict(void *dst, const void *region_src, size_t n) {
    char *d = (char *)dst;
    const char *s = (const char *)region_src;
    if (n && ((uintptr_t)s & 1)) {
        IVMPI_TRACE(s, 1);
        *(uint8_t *)d = *(const volatile uint8_t *)s;
        d += 1; s += 1; n -= 1;
    }
    if (n >= 2 && ((uintptr_t)s & 2)) {
        IVMPI_TRACE(s, 2);
        uint16_t v = *(const volatile uint16_t *)s;
        memcpy(d, &v, 2);
        d += 2; s += 2; n -= 2;
    }
    if (n >= 4 && ((uintptr_t)s & 4)) {
        IVMPI_TRACE(s, 4);
        uint32_t v = *(const volatile uint32_t *)s;
        memcpy(d, &v, 4);
        d += 4; s += 4; n -= 4;
    }
#if IVMPI_VECTOR16
    if (n >= 16) {
        if ((uintptr_t)s & 8) {
            IVMPI_TRACE(s, 8);
            uint64_t v = *(const volatile uint64_t *)s;
            memcpy(d, &v, 8);
            d += 8; s += 8; n -= 8;
        }
        const volatile __m128i *sv = (const volatile __m128i *)s;
        while (n >= 64) {
            IVMPI_TRACE(sv, 16); IVMPI_TRACE(sv + 1, 16);
            IVMPI_TRACE(sv + 2, 16); IVMPI_TRACE(sv + 3, 16);
            __m128i v0 = sv[0], v1 = sv[1], v2 = sv[2], v3 = sv[3];
            _mm_storeu_si128((__m128i *)d, v0);
            _mm_storeu_si128((__m128i *)(d + 16), v1);
            _mm_storeu_si128((__m128i *)(d + 32), v2);
            _mm_storeu_si128((__m128i *)(d + 48), v3);
            sv += 4; d += 64; n -= 64;
        }
        while (n >= 16) {
            IVMPI_TRACE(sv, 16);
            _mm_storeu_si128((__m128i *)d, *sv++);
            d += 16; n -= 16;
        }
        s = (const char *)sv;
    }
#endif
    const volatile uint64_t *sw = (const volatile uint64_t *)s;
    while (n >= 32) {
        IVMPI_TRACE(sw, 8); IVMPI_TRACE(sw + 1, 8);
        IVMPI_TRACE(sw + 2, 8); IVMPI_TRACE(sw + 3, 8);
        uint64_t v0 = sw[0], v1 = sw[1], v2 = sw[2], v3 = sw[3];
        memcpy(d, &v0, 8); memcpy(d + 8, &v1, 8);
        memcpy(d + 16, &v2, 8); memcpy(d + 24, &v3, 8);
        sw += 4; d += 32; n -= 32;
    }
    while (n >= 8) {
        IVMPI_TRACE(sw, 8);
        uint64_t v = *sw++;
        memcpy(d, &v, 8);
        d += 8; n -= 8;
    }
    s = (const char *)sw;
    if (n >= 4) {
        IVMPI_TRACE(s, 4);
        uint32_t v = *(const volatile uint32_t *)s;
        memcpy(d, &v, 4);
        d += 4; s += 4; n -= 4;
    }
    if (n >= 2) {
        IVMPI_TRACE(s, 2);
        uint16_t v = *(const volatile uint16_t *)s;
        memcpy(d, &v, 2);
        d += 2; s += 2; n -= 2;
    }
    if (n) {
        IVMPI_TRACE(s, 1);
        *(uint8_t *)d = *(const volatile uint8_t *)s;
    }
}

/* A plain copy between normal memory (or the region outside strict mode).
 *
 * Why not always memcpy: glibc's x86-64 memcpy copies 4 KiB-1 MiB with
 * `rep movsb`, which on the AMD EPYC machines measured runs at 3 GB/s
 * instead of 40-50 GB/s when the destination lies 1-15 bytes (and, for
 * 8 KiB, up to ~100 bytes) above the source modulo 4 KiB: the stores alias
 * the loads still to come.  Ring frames move through the ring, so every
 * distance between a frame and a user's buffer comes up in turn.  Those
 * distances take a vector loop instead (docs/performance.md), on AMD
 * processors only: Intel's `rep movsb` has no such penalty, and writes
 * whole lines without first reading them, which a vector loop cannot
 * (a 64 KiB frame into ring lines the receiver last read: 5 us by the
 * loop against 2 by memcpy on an Intel Xeon). */
#if IVMPI_VECTOR16
#define IVMPI_SHORT_DISTANCE 128
#define IVMPI_SHORT_DISTANCE_MIN_BYTES 4096
#include <immintrin.h>
__attribute__((target("avx2")))
static void ivmpi_copy_loop_avx2(char *d, const char *s, size_t n) {
    while (n >= 128) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)s);
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(s + 32));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(s + 64));
        __m256i v3 = _mm256_loadu_si256((const __m256i *)(s + 96));
        _mm256_storeu_si256((__m256i *)d, v0);
        _mm256_storeu_si256((__m256i *)(d + 32), v1);
        _mm256_storeu_si256((__m256i *)(d + 64), v2);
        _mm256_storeu_si256((__m256i *)(d + 96), v3);
        d += 128; s += 128; n -= 128;
    }
    memcpy(d, s, n);
}
static void ivmpi_copy_loop_sse2(char *d, const char *s, size_t n) {
    while (n >= 64) {
        __m128i v0 = _mm_loadu_si128((const __m128i *)s);
        __m128i v1 = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i v2 = _mm_loadu_si128((const __m128i *)(s + 32));
        __m128i v3 = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_storeu_si128((__m128i *)d, v0);
        _mm_storeu_si128((__m128i *)(d + 16), v1);
        _mm_storeu_si128((__m128i *)(d + 32), v2);
        _mm_storeu_si128((__m128i *)(d + 48), v3);
        d += 64; s += 64; n -= 64;
    }
    memcpy(d, s, n);
}
static int ivmpi_have_avx2 = -1;
static int ivmpi_short_distance_slow = -1;   /* 1: AMD, whose rep movsb has the penalty */
#endif

static inline void ivmpi_copy_plain(void *dst, const void *src, size_t n) {
#if IVMPI_VECTOR16
    if (n >= IVMPI_SHORT_DISTANCE_MIN_BYTES
            && (((uintptr_t)dst - (uintptr_t)src) & 4095) < IVMPI_SHORT_DISTANCE) {
        if (ivmpi_short_distance_slow < 0) {
            __builtin_cpu_init();
            ivmpi_have_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
            ivmpi_short_distance_slow = __builtin_cpu_is("amd") ? 1 : 0;
        }
        if (!ivmpi_short_distance_slow)
            memcpy(dst, src, n);
        else if (ivmpi_have_avx2)
            ivmpi_copy_loop_avx2((char *)dst, (const char *)src, n);
        else
            ivmpi_copy_loop_sse2((char *)dst, (const char *)src, n);
        return;
    }
#endif
    memcpy(dst, src, n);
}

/* The same where the two ranges may overlap (memmove's contract). */
static inline void ivmpi_move_plain(void *dst, const void *src, size_t n) {
    if ((uintptr_t)dst - (uintptr_t)src < n)   /* dst inside [src, src + n) */
        memmove(dst, src, n);
    else
        ivmpi_copy_plain(dst, src, n);
}

/* The copies the rest of ivmpi calls: strict selects the aligned path. */
static inline void ivmpi_copy_to_region(void *region_dst, const void *src, size_t n, int strict) {
    if (strict) {
        ivmpi_copy_to_region_strict(region_dst, src, n);
    } else {
        IVMPI_TRACE(region_dst, 0);
        ivmpi_copy_plain(region_dst, src, n);
    }
}
static inline void ivmpi_copy_from_region(void *dst, const void *region_src, size_t n, int strict) {
    if (strict) {
        ivmpi_copy_from_region_strict(dst, region_src, n);
    } else {
        IVMPI_TRACE(region_src, 0);
        ivmpi_copy_plain(dst, region_src, n);
    }
}

/* Set n bytes of the region to `value`.  Strict mode follows the same
 * head / aligned 8-byte body / tail pattern as the copies, because memset
 * uses `dc zva` and unaligned stores on arm64. */
static inline void ivmpi_fill_region(void *region_dst, unsigned char value, size_t n, int strict) {
    char *d = (char *)region_dst;
    if (!strict) {
        IVMPI_TRACE(region_dst, 0);
        memset(region_dst, value, n);
        return;
    }
    uint64_t v8 = 0x0101010101010101ull * value;
    if (n && ((uintptr_t)d & 1)) {
        IVMPI_TRACE(d, 1);
        *(volatile uint8_t *)d = (uint8_t)v8;
        d += 1; n -= 1;
    }
    if (n >= 2 && ((uintptr_t)d & 2)) {
        IVMPI_TRACE(d, 2);
        *(volatile uint16_t *)d = (uint16_t)v8;
        d += 2; n -= 2;
    }
    if (n >= 4 && ((uintptr_t)d & 4)) {
        IVMPI_TRACE(d, 4);
        *(volatile uint32_t *)d = (uint32_t)v8;
        d += 4; n -= 4;
    }
#if IVMPI_VECTOR16
    if (n >= 16) {
        if ((uintptr_t)d & 8) {
            IVMPI_TRACE(d, 8);
            *(volatile uint64_t *)d = v8;
            d += 8; n -= 8;
        }
        const __m128i v16 = _mm_set1_epi8((char)value);
        volatile __m128i *dv = (volatile __m128i *)d;
        while (n >= 16) {
            IVMPI_TRACE(dv, 16);
            *dv++ = v16;
            n -= 16;
        }
        d = (char *)dv;
    }
#endif
    volatile uint64_t *dw = (volatile uint64_t *)d;
    while (n >= 32) {
        IVMPI_TRACE(dw, 8); IVMPI_TRACE(dw + 1, 8);
        IVMPI_TRACE(dw + 2, 8); IVMPI_TRACE(dw + 3, 8);
        dw[0] = v8; dw[1] = v8; dw[2] = v8; dw[3] = v8;
        dw += 4; n -= 32;
    }
    while (n >= 8) {
        IVMPI_TRACE(dw, 8);
        *dw++ = v8;
        n -= 8;
    }
    d = (char *)dw;
    if (n >= 4) {
        IVMPI_TRACE(d, 4);
        *(volatile uint32_t *)d = (uint32_t)v8;
        d += 4; n -= 4;
    }
    if (n >= 2) {
        IVMPI_TRACE(d, 2);
        *(volatile uint16_t *)d = (uint16_t)v8;
        d += 2; n -= 2;
    }
    if (n) {
        IVMPI_TRACE(d, 1);
        *(volatile uint8_t *)d = (uint8_t)v8;
    }
}

#endif /* IVMPI_COPYCORE_H */
