/*
 * ivmpi_echo: one rank of an ivmpi job, written in C from docs/layout.md alone.
 *
 * It joins a standalone job (started by `IVMPI_RANK=0 IVMPI_SIZE=N python ...`)
 * as rank R > 0, takes part in the start-up barrier, then sends every eager
 * message that rank 0 sends it on the world communicator straight back, with
 * the same tag, until a message with tag 999 (which it also echoes).  It shows
 * the whole protocol a compatible peer needs for small messages: the header
 * checks, the join handshake, the heartbeat, and both ends of a ring.
 *
 * Every region access is an aligned 8-byte load or store (what ARM64 device
 * memory requires); nothing read from the region is used before it is checked.
 *
 *     cc -O2 -pthread -o ivmpi_echo ivmpi_echo.c
 *     ./ivmpi_echo /dev/shm/job 1 2
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x4e475249504d5649ull /* "IVMPIRGN" */
#define VERSION 3
#define SLOTS_OFFSET 4096
#define SLOT_BYTES 256
#define RING_CONTROL 128

/* Header fields (byte offsets). */
enum { H_MAGIC = 0, H_VERSION = 8, H_REGION_SIZE = 16, H_NRANKS = 24, H_RING_BYTES = 32,
       H_SLOTS_OFFSET = 40, H_RINGS_OFFSET = 48, H_RING_STRIDE = 56, H_EAGER_LIMIT = 64,
       H_CHUNK_BYTES = 72, H_JOB_ID = 80, H_HEAP_OFFSET = 88, H_HEAP_BYTES = 96,
       H_HEADS_OFFSET = 104, H_HEADS_STRIDE = 112, H_READY = 128 };
/* Slot fields. */
enum { S_STATE = 0, S_JOB_ID = 8, S_NONCE = 16, S_PID = 24, S_HEARTBEAT = 64,
       S_HEARTBEAT_NS = 72, S_ADMITTED = 128 };
enum { STATE_JOINING = 1, STATE_ATTACHED = 2, STATE_FINALIZED = 3 };
/* Frame kinds. */
enum { EAGER = 1, PAD = 7, EAGER_PARTS = 9 };

#define WORLD_CONTEXT 0
#define BARRIER_CONTEXT 1 /* the world communicator's collective twin */
#define BARRIER_TAG 1
#define STOP_TAG 999
#define TIMEOUT_S 60.0

static volatile char *region;
static uint64_t region_size;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ivmpi_echo: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* Aligned 8-byte accesses; acquire/release where docs/layout.md asks. */
static uint64_t load(uint64_t off) { return *(volatile uint64_t *)(region + off); }
static void store(uint64_t off, uint64_t v) { *(volatile uint64_t *)(region + off) = v; }
static uint64_t load_acquire(uint64_t off)
{
    return __atomic_load_n((uint64_t *)(region + off), __ATOMIC_ACQUIRE);
}
static void store_release(uint64_t off, uint64_t v)
{
    __atomic_store_n((uint64_t *)(region + off), v, __ATOMIC_RELEASE);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Waiting: spin a little, then give the core away (peers may share it). */
static void pause_a_bit(unsigned *idle, double start, const char *what)
{
    if (++*idle > 1000)
        sched_yield();
    if ((*idle & 4095) == 0 && now() - start > TIMEOUT_S)
        die("timed out waiting for %s", what);
}

/* ---- the job -------------------------------------------------------- */

static uint64_t nranks, ring_bytes, heads_offset, heads_stride, rings_offset, ring_stride;
static uint64_t eager_limit, job_id;
static uint64_t my_slot;
static int rank;

static int power_of_two(uint64_t x) { return x && !(x & (x - 1)); }
static uint64_t roundup(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

static void check_header(void)
{
    job_id = load_acquire(H_READY);
    if (load(H_MAGIC) != MAGIC)
        die("bad magic %#llx", (unsigned long long)load(H_MAGIC));
    if (load(H_VERSION) != VERSION)
        die("layout version %llu, expected %d", (unsigned long long)load(H_VERSION), VERSION);
    if (load(H_REGION_SIZE) > region_size)
        die("header says the region has %llu bytes, but only %llu are mapped",
            (unsigned long long)load(H_REGION_SIZE), (unsigned long long)region_size);
    nranks = load(H_NRANKS);
    if (nranks < 1 || nranks > 4096)
        die("impossible rank count %llu", (unsigned long long)nranks);
    ring_bytes = load(H_RING_BYTES);
    if (!power_of_two(ring_bytes) || ring_bytes < 4096 || ring_bytes > (1ull << 30))
        die("impossible ring size %llu", (unsigned long long)ring_bytes);
    heads_offset = SLOTS_OFFSET + roundup(nranks * SLOT_BYTES, 4096);
    heads_stride = roundup(nranks * 8, 128);
    rings_offset = heads_offset + roundup(nranks * heads_stride, 4096);
    ring_stride = RING_CONTROL + ring_bytes;
    if (load(H_SLOTS_OFFSET) != SLOTS_OFFSET || load(H_HEADS_OFFSET) != heads_offset
        || load(H_HEADS_STRIDE) != heads_stride || load(H_RINGS_OFFSET) != rings_offset
        || load(H_RING_STRIDE) != ring_stride)
        die("slot, head or ring offsets disagree with the rank count and ring size");
    uint64_t rings_end = rings_offset + nranks * nranks * ring_stride;
    if (rings_end > load(H_REGION_SIZE))
        die("the rings do not fit in the region");
    eager_limit = load(H_EAGER_LIMIT);
    uint64_t chunk = load(H_CHUNK_BYTES);
    if (eager_limit == 0 || eager_limit > ring_bytes / 4 || chunk == 0 || chunk > ring_bytes / 4)
        die("impossible eager limit %llu or chunk size %llu", (unsigned long long)eager_limit,
            (unsigned long long)chunk);
    uint64_t heap_offset = roundup(rings_end, 4096), heap_bytes = load(H_HEAP_BYTES);
    if (load(H_HEAP_OFFSET) != heap_offset || heap_bytes % 4096
        || heap_offset + nranks * heap_bytes > load(H_REGION_SIZE))
        die("the heaps do not fit in the region");
    if (job_id == 0 || job_id != load(H_JOB_ID))
        die("the header's ready word does not match its job id");
}

static void join(int size)
{
    uint64_t nonce = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, &nonce, sizeof nonce) != sizeof nonce)
        die("cannot read /dev/urandom");
    close(fd);
    nonce |= 1;
    my_slot = SLOTS_OFFSET + (uint64_t)rank * SLOT_BYTES;
    if (my_slot + SLOT_BYTES > region_size)
        die("rank %d has no slot in a region of %llu bytes", rank, (unsigned long long)region_size);
    double start = now();
    unsigned idle = 0;
    for (;;) {
        /* Rank 0's initialisation zeroes the slots: write ours again if so. */
        if (load(my_slot + S_NONCE) != nonce || load(my_slot + S_STATE) != STATE_JOINING) {
            store(my_slot + S_NONCE, nonce);
            store(my_slot + S_STATE, STATE_JOINING);
        }
        if (load_acquire(H_READY) != 0 && load(my_slot + S_ADMITTED) == nonce)
            break;
        usleep(1000);
        pause_a_bit(&idle, start, "rank 0 to admit this rank");
    }
    check_header();
    if (nranks != (uint64_t)size)
        die("the job has %llu ranks, not %d", (unsigned long long)nranks, size);
    store(my_slot + S_JOB_ID, job_id);
    store(my_slot + S_PID, (uint64_t)getpid());
    store(my_slot + S_STATE, STATE_ATTACHED);
}

static void *heartbeat(void *unused)
{
    (void)unused;
    for (uint64_t count = 1;; count++) {
        usleep(100000);
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        store(my_slot + S_HEARTBEAT_NS, (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec);
        store(my_slot + S_HEARTBEAT, count);
    }
    return NULL;
}

/* ---- rings ---------------------------------------------------------- */

struct ring {
    uint64_t base;      /* control block offset; tail at +64, data at +128 */
    uint64_t head_word; /* the head: in the receiver's head array */
    uint64_t head;      /* producer: published; consumer: last head seen */
    uint64_t tail;
    int peer;
};

static struct ring ring_between(int from, int to)
{
    struct ring r = { rings_offset + ((uint64_t)from * nranks + to) * ring_stride,
                      heads_offset + (uint64_t)to * heads_stride + (uint64_t)from * 8, 0, 0,
                      from == rank ? to : from };
    return r;
}

struct frame {
    uint32_t kind, length;
    int32_t tag;
    uint32_t context;
    uint64_t a, b;
    uint64_t payload[]; /* roundup8(length) / 8 words */
};

/* Wait for the next frame (skipping PADs), check it, copy it out, release it. */
static struct frame *receive(struct ring *r, struct frame *f)
{
    double start = now();
    unsigned idle = 0;
    for (;;) {
        uint64_t head = load_acquire(r->head_word);
        if (head < r->head || head % 8 || head < r->tail || head - r->tail > ring_bytes)
            die("peer %d: corrupt ring (head %llu after %llu, tail %llu)", r->peer,
                (unsigned long long)head, (unsigned long long)r->head,
                (unsigned long long)r->tail);
        r->head = head;
        if (head == r->tail) {
            pause_a_bit(&idle, start, "a message from rank 0");
            continue;
        }
        uint64_t pos = r->tail % ring_bytes, data = r->base + RING_CONTROL;
        uint64_t w0 = load(data + pos);
        uint32_t kind = (uint32_t)w0, length = (uint32_t)(w0 >> 32);
        if (kind == PAD) {
            r->tail += ring_bytes - pos;
            store_release(r->base + 64, r->tail);
            continue;
        }
        uint64_t size = 32 + roundup(length, 8);
        if (kind != EAGER && kind != EAGER_PARTS)
            die("peer %d: frame kind %u; this peer takes eager messages only", r->peer, kind);
        if (length > eager_limit || pos + size > ring_bytes || size > head - r->tail)
            die("peer %d: eager frame of %u bytes does not fit where it is", r->peer, length);
        if (kind == EAGER_PARTS) {
            /* Published before its payload: the fill word (a) says how many
             * payload bytes are there; this peer simply waits for all. */
            uint64_t filled = 0, seen;
            idle = 0;
            while ((seen = load_acquire(data + pos + 16)) < length) {
                if (seen < filled)
                    die("peer %d: eager frame's fill word went back to %llu", r->peer,
                        (unsigned long long)seen);
                filled = seen;
                pause_a_bit(&idle, start, "the rest of an eager message");
            }
            if (seen > length)
                die("peer %d: eager frame of %u bytes says %llu are filled", r->peer, length,
                    (unsigned long long)seen);
        }
        uint64_t w1 = load(data + pos + 8);
        f->kind = kind;
        f->length = length;
        f->tag = (int32_t)(uint32_t)w1;
        f->context = (uint32_t)(w1 >> 32);
        f->a = load(data + pos + 16);
        f->b = load(data + pos + 24);
        if (f->tag < 0)
            die("peer %d: negative tag %d", r->peer, f->tag);
        for (uint64_t i = 0; i < roundup(length, 8) / 8; i++)
            f->payload[i] = load(data + pos + 32 + 8 * i);
        r->tail += size;
        store_release(r->base + 64, r->tail);
        return f;
    }
}

static void wait_for_room(struct ring *r, uint64_t bytes)
{
    double start = now();
    unsigned idle = 0;
    while (r->head + bytes - r->tail > ring_bytes) {
        uint64_t tail = load_acquire(r->base + 64);
        if (tail < r->tail || tail > r->head)
            die("peer %d: corrupt ring tail %llu", r->peer, (unsigned long long)tail);
        r->tail = tail;
        if (r->head + bytes - r->tail > ring_bytes)
            pause_a_bit(&idle, start, "room in the ring to rank 0");
    }
}

static void send(struct ring *r, int32_t tag, uint32_t context, const uint64_t *payload,
                 uint32_t length)
{
    uint64_t size = 32 + roundup(length, 8), data = r->base + RING_CONTROL;
    uint64_t pos = r->head % ring_bytes;
    if (ring_bytes - pos < size) { /* frames never wrap: pad to the end first */
        wait_for_room(r, ring_bytes - pos);
        store(data + pos, PAD);
        r->head += ring_bytes - pos;
        store_release(r->head_word, r->head);
        pos = 0;
    }
    wait_for_room(r, size);
    store(data + pos, EAGER | (uint64_t)length << 32);
    store(data + pos + 8, (uint32_t)tag | (uint64_t)context << 32);
    store(data + pos + 16, 0);
    store(data + pos + 24, 0);
    for (uint64_t i = 0; i < roundup(length, 8) / 8; i++)
        store(data + pos + 32 + 8 * i, payload[i]);
    r->head += size;
    store_release(r->head_word, r->head);
}

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: ivmpi_echo REGION_FILE RANK NRANKS");
    rank = atoi(argv[2]);
    int size = atoi(argv[3]);
    if (rank < 1 || rank >= size)
        die("the rank must be in 1..NRANKS-1 (rank 0 starts the job)");
    int fd = open(argv[1], O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        die("cannot open %s: %s", argv[1], strerror(errno));
    region_size = (uint64_t)st.st_size;
    region = mmap(NULL, region_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (region == MAP_FAILED)
        die("cannot map %s: %s", argv[1], strerror(errno));

    join(size);
    pthread_t beat;
    if (pthread_create(&beat, NULL, heartbeat, NULL) != 0)
        die("cannot start the heartbeat thread");

    struct frame *f = malloc(sizeof *f + roundup(eager_limit, 8));
    if (!f)
        die("out of memory");

    /* Start-up barrier (dissemination on the collective twin of the world
     * communicator): round k sends an empty message to rank + 2^k and
     * receives one from rank - 2^k, context 1, tag 1. */
    for (int distance = 1; distance < size; distance <<= 1) {
        struct ring out = ring_between(rank, (rank + distance) % size);
        struct ring in = ring_between((rank - distance + size) % size, rank);
        out.head = load(out.head_word);
        out.tail = load(out.base + 64);
        in.head = in.tail = load(in.base + 64);
        send(&out, BARRIER_TAG, BARRIER_CONTEXT, NULL, 0);
        receive(&in, f);
        if (f->context != BARRIER_CONTEXT || f->tag != BARRIER_TAG || f->length)
            die("expected the start-up barrier, got tag %d context %u", f->tag, f->context);
    }

    struct ring from0 = ring_between(0, rank), to0 = ring_between(rank, 0);
    from0.head = from0.tail = load(from0.base + 64);
    to0.head = load(to0.head_word);
    to0.tail = load(to0.base + 64);
    uint64_t messages = 0, bytes = 0;
    for (;;) {
        receive(&from0, f);
        if (f->context != WORLD_CONTEXT)
            die("message on context %u; this peer serves the world communicator only",
                f->context);
        send(&to0, f->tag, WORLD_CONTEXT, f->payload, f->length);
        messages++;
        bytes += f->length;
        if (f->tag == STOP_TAG)
            break;
    }
    store(my_slot + S_STATE, STATE_FINALIZED);
    printf("ivmpi_echo: rank %d echoed %llu messages, %llu bytes\n", rank,
           (unsigned long long)messages, (unsigned long long)bytes);
    return 0;
}
