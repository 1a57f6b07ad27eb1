/* The capture reader's per-packet loops in C (optional; the Python modules are the reference).
 *
 * Why C: reading a capture is a few sequential walks whose every step is a handful of
 * byte reads (where record k+1 starts, what a packet's headers say, which flow it belongs
 * to, what a segment's packets mean in order). numpy does these as dozens of whole-column
 * passes; plain C does each in one pass over memory
 * that is already in cache. Plain CPython C API and the buffer protocol only: no numpy
 * headers, so building needs nothing but a C compiler, and callers allocate the numpy
 * arrays this module fills.
 *
 * This is the fast backend of capture/backend.py. Every function here has a Python twin
 * in the numpy backend that is the reference (formats.py, decode.py, flows.py, reuse.py
 * with model/recycle.py, zeek.py); tests/test_capture_cext.py checks that both give identical columns
 * and reports on the test captures, the fuzz corpus and hypothesis-damaged files. Reads are
 * bounds-checked against the buffer: damaged input gives the reference's skip counts, never
 * a read outside the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

typedef uint8_t u8;
typedef int64_t i64;
typedef uint64_t u64;
typedef uint32_t u32;

static inline u32 be16(const u8 *p) { return ((u32)p[0] << 8) | p[1]; }
static inline u32 be32(const u8 *p) { return ((u32)p[0] << 24) | ((u32)p[1] << 16) | ((u32)p[2] << 8) | p[3]; }
static inline u32 le32(const u8 *p) { return ((u32)p[3] << 24) | ((u32)p[2] << 16) | ((u32)p[1] << 8) | p[0]; }

/* ---- buffers ------------------------------------------------------------------------- */

typedef struct {
    Py_buffer v;
    int held;
} Buf;

/* A contiguous buffer of `item`-byte items (count checked when `n` >= 0). */
static int buf_get(PyObject *o, Buf *b, Py_ssize_t item, Py_ssize_t n, int writable, const char *name)
{
    if (PyObject_GetBuffer(o, &b->v, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
        b->held = 0;
        return -1;
    }
    b->held = 1;
    if (b->v.len % item != 0 || (n >= 0 && b->v.len / item != n)) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd items of %zd bytes", name, b->v.len, n, item);
        return -1;
    }
    return 0;
}

static void buf_release(Buf *b, int k)
{
    for (int i = 0; i < k; i++)
        if (b[i].held) {
            PyBuffer_Release(&b[i].v);
            b[i].held = 0;
        }
}

/* Ask for transparent huge pages on a large buffer that is about to be written (as numpy
 * does for its arrays of 4 MB or more). Each 4 KB page of fresh memory is otherwise
 * one page fault; in a short-lived `tcpreuse analyze` those faults cost more than the
 * loops that fill the pages. Advice only: ignored where THP is off or not Linux. */
static void huge_hint(void *p, size_t n)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p && n >= ((size_t)2 << 20)) { /* room for a 2 MB page */
        uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
        madvise((void *)a, (uintptr_t)p + n - a, MADV_HUGEPAGE);
    }
#else
    (void)p;
    (void)n;
#endif
}

static void *big_malloc(size_t n)
{
    void *p = malloc(n);
    huge_hint(p, n);
    return p;
}

/* A bytearray that grows (realloc: large blocks move by remapping, not copying). */
typedef struct {
    PyObject *ba;
    Py_ssize_t n, cap, item;
} Grow;

static int grow_init(Grow *g, Py_ssize_t item, Py_ssize_t cap)
{
    g->item = item;
    g->n = 0;
    g->cap = cap < 16 ? 16 : cap;
    g->ba = PyByteArray_FromStringAndSize(NULL, g->cap * item);
    if (!g->ba)
        return -1;
    huge_hint(PyByteArray_AS_STRING(g->ba), (size_t)(g->cap * item));
    return 0;
}

static inline void *grow_slot(Grow *g)
{
    if (g->n == g->cap) {
        if (PyByteArray_Resize(g->ba, 2 * g->cap * g->item) < 0)
            return NULL;
        g->cap *= 2;
        huge_hint(PyByteArray_AS_STRING(g->ba), (size_t)(g->cap * g->item));
    }
    return PyByteArray_AS_STRING(g->ba) + (g->n++) * g->item;
}

static inline int grow_i64(Grow *g, i64 v)
{
    void *p = grow_slot(g);
    if (!p)
        return -1;
    memcpy(p, &v, 8);
    return 0;
}

static PyObject *grow_finish(Grow *g)
{
    if (PyByteArray_Resize(g->ba, g->n * g->item) < 0) {
        Py_CLEAR(g->ba);
        return NULL;
    }
    PyObject *r = g->ba;
    g->ba = NULL;
    return r;
}

#define PREFETCH_AHEAD 1024 /* bytes: a few records ahead in the file */

/* ---- pcap and pcapng record walks (formats._parse_pcap_numpy, formats._epb_walk_struct) */

#define MAX_RECORD (1 << 18) /* formats.MAX_RECORD */

/* pcap_scan(buf, off, end, little, tsdiv, limit, bounds, ts_lo, ts_hi)
 *   -> (offsets, status, stop, bounds, ts_lo, ts_hi)
 * formats._parse_pcap's walk and header check in one pass: offsets of the records from
 * `off` whose headers are believable (formats._fields_ok), up to the first that is not.
 * status 0: clean end at `end`; 1: the record at `stop` runs past `end`; 2: stray bytes
 * (a cut header) at `stop`; 3: the header at `stop` is not believable. The time bounds are
 * set from the first whole record when `bounds` is false. */
static PyObject *pcap_scan(PyObject *self, PyObject *args)
{
    PyObject *bo;
    Py_ssize_t off, end;
    int little, bounds;
    long long tsdiv, limit;
    double ts_lo, ts_hi;
    if (!PyArg_ParseTuple(args, "OnnpLLpdd", &bo, &off, &end, &little, &tsdiv, &limit, &bounds, &ts_lo, &ts_hi))
        return NULL;
    Buf b;
    if (buf_get(bo, &b, 1, -1, 0, "buf") < 0) {
        buf_release(&b, 1);
        return NULL;
    }
    if (end > b.v.len || off < 0) {
        buf_release(&b, 1);
        PyErr_SetString(PyExc_ValueError, "pcap_scan: range beyond the buffer");
        return NULL;
    }
    const u8 *p = b.v.buf;
    Grow g;
    PyObject *res = NULL;
    if (grow_init(&g, 8, (end - off) / 96 + 16) < 0)
        goto done;
    const i64 olim = (limit > MAX_RECORD ? limit : MAX_RECORD) * 4;
    i64 o = off;
    int status = 0;
    while (o + 16 <= end) {
        const u8 *h = p + o;
        if (o + PREFETCH_AHEAD < end)
            __builtin_prefetch(h + PREFETCH_AHEAD);
        i64 sec = little ? le32(h) : be32(h), frac = little ? le32(h + 4) : be32(h + 4);
        i64 incl = little ? le32(h + 8) : be32(h + 8), orig = little ? le32(h + 12) : be32(h + 12);
        if (o + 16 + incl > end) {
            status = 1;
            break;
        }
        if (!bounds) {
            ts_lo = (double)sec - 86400.0 * 365;
            ts_hi = (double)sec + 86400.0 * 365 * 5;
            bounds = 1;
        }
        if (!(frac < tsdiv && incl <= limit && incl <= orig && orig <= olim && (double)sec >= ts_lo &&
              (double)sec <= ts_hi)) {
            status = 3;
            break;
        }
        if (grow_i64(&g, o) < 0)
            goto done;
        o += 16 + incl;
    }
    if (!status && o != end)
        status = 2;
    PyObject *offs = grow_finish(&g);
    if (offs)
        res = Py_BuildValue("(NiLidd)", offs, status, (long long)o, bounds, ts_lo, ts_hi);
done:
    Py_XDECREF(g.ba);
    buf_release(&b, 1);
    return res;
}

/* epb_walk(buf, off, end, little) -> (offsets, stop)
 * A run of pcapng Enhanced Packet Blocks from `off`: stops at the first block whose 8-byte
 * header does not fit, that is not type 6, or whose length is not a multiple of 4 within
 * 32..end-offset. */
static PyObject *epb_walk(PyObject *self, PyObject *args)
{
    PyObject *bo;
    Py_ssize_t off, end;
    int little;
    if (!PyArg_ParseTuple(args, "Onnp", &bo, &off, &end, &little))
        return NULL;
    Buf b;
    if (buf_get(bo, &b, 1, -1, 0, "buf") < 0) {
        buf_release(&b, 1);
        return NULL;
    }
    if (end > b.v.len || off < 0) {
        buf_release(&b, 1);
        PyErr_SetString(PyExc_ValueError, "epb_walk: range beyond the buffer");
        return NULL;
    }
    const u8 *p = b.v.buf;
    Grow g;
    PyObject *res = NULL;
    if (grow_init(&g, 8, (end - off) / 64 + 16) < 0)
        goto done;
    i64 o = off;
    while (o + 8 <= end) {
        u32 bt = little ? le32(p + o) : be32(p + o);
        i64 bl = little ? le32(p + o + 4) : be32(p + o + 4);
        if (bt != 6 || bl < 32 || bl > end - o || (bl & 3))
            break;
        if (grow_i64(&g, o) < 0)
            goto done;
        o += bl;
    }
    PyObject *offs = grow_finish(&g);
    if (offs)
        res = Py_BuildValue("(NL)", offs, (long long)o);
done:
    Py_XDECREF(g.ba);
    buf_release(&b, 1);
    return res;
}

/* ---- decoding (decode._decode_range and friends) ------------------------------------- */

/* skip reasons, in decode.SKIP_REASONS order */
enum { R_CUT_L2, R_NOT_IP, R_CUT_IP, R_BAD_IP, R_FRAGMENT, R_NOT_TCP, R_V6_EXT, R_CUT_TCP, R_BAD_TCP, R_OPT_CUT };
#define MAX_V6_EXT 16

enum { C_TS, C_SRC, C_DST, C_SPORT, C_DPORT, C_SEQ, C_ACK, C_FLAGS, C_WIN, C_PLEN, C_HAS_TS, C_TSVAL, C_TSECR,
       C_MSS, C_WSCALE, C_SACKOK, C_OPT_CUT, C_FRAME, N_COLS };
static const Py_ssize_t COL_ITEM[N_COLS] = {8, 8, 8, 2, 2, 4, 4, 1, 2, 4, 1, 4, 4, 2, 2, 1, 1, 8};

typedef struct {
    i64 lt, cut_l2, not_ip, frames;
    int supported;
} LtCount;

typedef struct {
    LtCount *lt;
    int nlt, cap;
    i64 ip4[4]; /* cut, bad, fragment, not tcp */
    i64 v6_cut0, v6_bad, v6_cut[MAX_V6_EXT], v6_frag[MAX_V6_EXT], v6_ext, v6_not_tcp;
    i64 tcp_cut, tcp_bad, opt_cut;
} Counts;

/* IPv6 address table: 16-byte address -> index in order of assignment */
typedef struct {
    u8 *keys;     /* 16 bytes per address, by index */
    int32_t *slot; /* open addressing: index + 1, 0 empty */
    Py_ssize_t n, cap, nslot;
} V6Table;

static u64 v6_hash(const u8 *a)
{
    u64 x, y;
    memcpy(&x, a, 8);
    memcpy(&y, a + 8, 8);
    u64 h = x * 0x9E3779B97F4A7C15ULL ^ (y + 0x632BE59BD9B4E019ULL) * 0xC2B2AE3D27D4EB4FULL;
    return h ^ (h >> 29);
}

static int v6_grow(V6Table *t)
{
    Py_ssize_t ns = t->nslot ? t->nslot * 2 : 256;
    int32_t *s = calloc((size_t)ns, sizeof(int32_t));
    if (!s)
        return -1;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        u64 h = v6_hash(t->keys + 16 * i) & (u64)(ns - 1);
        while (s[h])
            h = (h + 1) & (u64)(ns - 1);
        s[h] = (int32_t)(i + 1);
    }
    free(t->slot);
    t->slot = s;
    t->nslot = ns;
    return 0;
}

/* index of `a`, inserting it if `insert` (-1: absent, -2: out of memory) */
static i64 v6_find(V6Table *t, const u8 *a, int insert)
{
    if (insert && (t->n + 1) * 2 > t->nslot && v6_grow(t) < 0)
        return -2;
    if (!t->nslot)
        return -1;
    u64 h = v6_hash(a) & (u64)(t->nslot - 1);
    while (t->slot[h]) {
        i64 i = t->slot[h] - 1;
        if (!memcmp(t->keys + 16 * i, a, 16))
            return i;
        h = (h + 1) & (u64)(t->nslot - 1);
    }
    if (!insert)
        return -1;
    if (t->n == t->cap) {
        Py_ssize_t nc = t->cap ? t->cap * 2 : 64;
        u8 *k = realloc(t->keys, (size_t)nc * 16);
        if (!k)
            return -2;
        t->keys = k;
        t->cap = nc;
    }
    memcpy(t->keys + 16 * t->n, a, 16);
    t->slot[h] = (int32_t)(t->n + 1);
    return t->n++;
}

typedef struct {
    const u8 *src, *dst;
    i64 row; /* -1: dropped after the IPv6 stage (its addresses still enter the table) */
} V6Cand;

static int cmp16(const void *a, const void *b) { return memcmp(*(const u8 *const *)a, *(const u8 *const *)b, 16); }

static LtCount *lt_entry(Counts *c, i64 lt, int supported)
{
    for (int i = 0; i < c->nlt; i++)
        if (c->lt[i].lt == lt)
            return &c->lt[i];
    if (c->nlt == c->cap) {
        int nc = c->cap ? c->cap * 2 : 8;
        LtCount *p = realloc(c->lt, (size_t)nc * sizeof(LtCount));
        if (!p)
            return NULL;
        c->lt = p;
        c->cap = nc;
    }
    LtCount *e = &c->lt[c->nlt++];
    memset(e, 0, sizeof *e);
    e->lt = lt;
    e->supported = supported;
    return e;
}

static int cmp_lt(const void *a, const void *b)
{
    i64 x = ((const LtCount *)a)->lt, y = ((const LtCount *)b)->lt;
    return (x > y) - (x < y);
}

static int ev(PyObject *events, int reason, i64 n)
{
    if (!n)
        return 0;
    PyObject *t = Py_BuildValue("(iL)", reason, (long long)n);
    if (!t)
        return -1;
    int r = PyList_Append(events, t);
    Py_DECREF(t);
    return r;
}

/* The reference's rep.skip() calls of one chunk, in its order (the dict keeps the order
 * in which reasons first appear). */
static int emit_chunk(Counts *c, PyObject *events, PyObject *unsup)
{
    qsort(c->lt, (size_t)c->nlt, sizeof(LtCount), cmp_lt);
    for (int i = 0; i < c->nlt; i++) {
        LtCount *e = &c->lt[i];
        if (!e->supported) {
            PyObject *t = Py_BuildValue("(LL)", (long long)e->lt, (long long)e->frames);
            if (!t || PyList_Append(unsup, t) < 0) {
                Py_XDECREF(t);
                return -1;
            }
            Py_DECREF(t);
            continue;
        }
        if (ev(events, R_CUT_L2, e->cut_l2) < 0 || ev(events, R_NOT_IP, e->not_ip) < 0)
            return -1;
    }
    if (ev(events, R_CUT_IP, c->ip4[0]) < 0 || ev(events, R_BAD_IP, c->ip4[1]) < 0 ||
        ev(events, R_FRAGMENT, c->ip4[2]) < 0 || ev(events, R_NOT_TCP, c->ip4[3]) < 0)
        return -1;
    if (ev(events, R_CUT_IP, c->v6_cut0) < 0 || ev(events, R_BAD_IP, c->v6_bad) < 0)
        return -1;
    for (int k = 0; k < MAX_V6_EXT; k++)
        if (ev(events, R_CUT_IP, c->v6_cut[k]) < 0 || ev(events, R_FRAGMENT, c->v6_frag[k]) < 0)
            return -1;
    if (ev(events, R_V6_EXT, c->v6_ext) < 0 || ev(events, R_NOT_TCP, c->v6_not_tcp) < 0)
        return -1;
    if (ev(events, R_CUT_TCP, c->tcp_cut) < 0 || ev(events, R_BAD_TCP, c->tcp_bad) < 0 ||
        ev(events, R_OPT_CUT, c->opt_cut) < 0)
        return -1;
    return 0;
}

typedef struct {
    u8 has_ts, sackok;
    u32 tsval, tsecr;
    uint16_t mss;
    int16_t wscale;
} Opts;

/* decode._options for one packet: options bytes [s, e) of a segment with TCP flags `fl`. */
static void options(const u8 *p, i64 s, i64 e, u8 fl, Opts *o)
{
    i64 room = e - s;
    if (room >= 12 && !(fl & 2) && be32(p + s) == 0x0101080Au) { /* NOP NOP TS, not a SYN */
        o->has_ts = 1;
        o->tsval = be32(p + s + 4);
        o->tsecr = be32(p + s + 8);
        return;
    }
    if (room <= 0)
        return;
    if ((fl & 2) && room >= 12) { /* the SYN layouts of common stacks, matched whole */
        u32 w0 = be32(p + s), w1 = be32(p + s + 4), w2 = be32(p + s + 8);
        int mss_ok = (w0 >> 16) == 0x0204;
        int lin = mss_ok && w1 == 0x0402080Au && room >= 20;
        if (lin) { /* Linux: MSS, SACK-permitted, TS, NOP, WS */
            u32 w4 = be32(p + s + 16);
            if ((w4 >> 8) == 0x010303u) {
                o->mss = (uint16_t)(w0 & 0xFFFF);
                o->sackok = 1;
                o->has_ts = 1;
                o->tsval = be32(p + s + 8);
                o->tsecr = be32(p + s + 12);
                o->wscale = (int16_t)(w4 & 0xFF);
                return;
            }
        } else if (mss_ok) {
            u32 ws = 0;
            int m = 0;
            if (w1 == 0x01010402u && (w2 >> 8) == 0x010303u) { /* Linux without TS */
                m = 1;
                ws = w2;
            } else if ((w1 >> 8) == 0x010303u && w2 == 0x01010402u) { /* Windows */
                m = 1;
                ws = w1;
            }
            if (m) {
                o->mss = (uint16_t)(w0 & 0xFFFF);
                o->sackok = 1;
                o->wscale = (int16_t)(ws & 0xFF);
                if (room <= 12)
                    return;
                /* more after the 12 bytes: walk the whole option space */
            }
        }
    }
    i64 pos = s;
    for (int step = 0; step < 40 && pos < e; step++) {
        u8 kind = p[pos];
        if (kind == 1) {
            pos += 1;
            continue;
        }
        if (kind == 0 || pos + 1 >= e)
            break;
        i64 ln = p[pos + 1];
        if (ln < 2 || pos + ln > e)
            break;
        if (kind == 8 && ln == 10) {
            o->has_ts = 1;
            o->tsval = be32(p + pos + 2);
            o->tsecr = be32(p + pos + 6);
        } else if (kind == 2 && ln == 4) {
            o->mss = (uint16_t)be16(p + pos + 2);
        } else if (kind == 3 && ln == 3) {
            o->wscale = p[pos + 2];
        } else if (kind == 4 && ln == 2) {
            o->sackok = 1;
        }
        pos += ln;
    }
}

static inline int is_v6_ext(u32 nh)
{
    return nh == 0 || nh == 43 || nh == 60 || nh == 135 || nh == 139 || nh == 140 || nh == 44 || nh == 51;
}

static inline int af_inet6(i64 af) { return af == 10 || af == 24 || af == 28 || af == 30; }

/* decode(buf, data_off, caplen, origlen, linktype, ts, frame, chunk, out) -> (m, events, unsupported, v6)
 * `out`: the 18 writable output columns of decode._COLS, one row per frame at most.
 * events: (reason, count) in the reference's order; unsupported: (link type, frames);
 * v6: the IPv6 address table (bytes, in key order). */
static PyObject *decode(PyObject *self, PyObject *args)
{
    PyObject *bo, *offo, *capo, *origo, *lto, *tso, *fro, *outo;
    Py_ssize_t chunk;
    int pcap = -1; /* >= 0: `offo` holds pcap record offsets (1: little-endian headers) */
    long long tsdiv = 1, pcap_lt = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOnO|iLL", &bo, &offo, &capo, &origo, &lto, &tso, &fro, &chunk, &outo, &pcap,
                          &tsdiv, &pcap_lt))
        return NULL;
    if (tsdiv < 1)
        tsdiv = 1;
    if (!PyTuple_Check(outo) || PyTuple_GET_SIZE(outo) != N_COLS) {
        PyErr_SetString(PyExc_TypeError, "decode: out must be a tuple of 18 arrays");
        return NULL;
    }
    if (chunk < 1)
        chunk = 1;
    Buf in[7], out[N_COLS];
    memset(in, 0, sizeof in);
    memset(out, 0, sizeof out);
    PyObject *res = NULL, *events = NULL, *unsup = NULL, *v6list = NULL;
    Counts c;
    memset(&c, 0, sizeof c);
    V6Table tab;
    memset(&tab, 0, sizeof tab);
    V6Cand *cand = NULL;
    const u8 **ptrs = NULL;

    if (buf_get(bo, &in[0], 1, -1, 0, "buf") < 0 || buf_get(offo, &in[1], 8, -1, 0, "data_off") < 0)
        goto done;
    Py_ssize_t n = in[1].v.len / 8;
    if (pcap < 0 && (buf_get(capo, &in[2], 8, n, 0, "caplen") < 0 || buf_get(origo, &in[3], 8, n, 0, "origlen") < 0 ||
                     buf_get(lto, &in[4], 4, n, 0, "linktype") < 0 || buf_get(tso, &in[5], 8, n, 0, "ts") < 0 ||
                     buf_get(fro, &in[6], 8, n, 0, "frame") < 0))
        goto done;
    for (int k = 0; k < N_COLS; k++)
        if (buf_get(PyTuple_GET_ITEM(outo, k), &out[k], COL_ITEM[k], n, 1, "out") < 0)
            goto done;
    const u8 *p = in[0].v.buf;
    const i64 size = in[0].v.len;
    const i64 *d_off = in[1].v.buf, *d_cap = in[2].v.buf, *d_orig = in[3].v.buf, *d_frame = in[6].v.buf;
    (void)d_cap, (void)d_orig, (void)d_frame; /* unread in pcap mode */
    const int32_t *d_lt = in[4].v.buf;
    const double *d_ts = in[5].v.buf;
    double *o_ts = out[C_TS].v.buf;
    u64 *o_src = out[C_SRC].v.buf, *o_dst = out[C_DST].v.buf;
    uint16_t *o_sport = out[C_SPORT].v.buf, *o_dport = out[C_DPORT].v.buf, *o_win = out[C_WIN].v.buf;
    u32 *o_seq = out[C_SEQ].v.buf, *o_ack = out[C_ACK].v.buf, *o_tsval = out[C_TSVAL].v.buf,
        *o_tsecr = out[C_TSECR].v.buf;
    u8 *o_flags = out[C_FLAGS].v.buf, *o_has_ts = out[C_HAS_TS].v.buf, *o_sackok = out[C_SACKOK].v.buf,
       *o_opt_cut = out[C_OPT_CUT].v.buf;
    int32_t *o_plen = out[C_PLEN].v.buf;
    uint16_t *o_mss = out[C_MSS].v.buf;
    int16_t *o_wscale = out[C_WSCALE].v.buf;
    i64 *o_frame = out[C_FRAME].v.buf;

    events = PyList_New(0);
    unsup = PyList_New(0);
    if (!events || !unsup)
        goto done;
    Py_ssize_t ccap = chunk < n ? chunk : n;
    cand = malloc(sizeof(V6Cand) * (size_t)(ccap + 1));
    ptrs = malloc(sizeof(u8 *) * 2 * (size_t)(ccap + 1));
    if (!cand || !ptrs) {
        PyErr_NoMemory();
        goto done;
    }
    i64 m = 0;
    for (Py_ssize_t a = 0; a < n; a += chunk) {
        Py_ssize_t b = a + chunk < n ? a + chunk : n;
        c.nlt = 0;
        memset(c.ip4, 0, sizeof c.ip4);
        c.v6_cut0 = c.v6_bad = c.v6_ext = c.v6_not_tcp = c.tcp_cut = c.tcp_bad = c.opt_cut = 0;
        memset(c.v6_cut, 0, sizeof c.v6_cut);
        memset(c.v6_frag, 0, sizeof c.v6_frag);
        Py_ssize_t ncand = 0;
        LtCount *le = NULL;
        for (Py_ssize_t i = a; i < b; i++) {
            if (i + 8 < b && d_off[i + 8] >= 0 && d_off[i + 8] + 64 <= size)
                __builtin_prefetch(p + d_off[i + 8] + 32);
            i64 start, caplen, origlen, lt, frame_no;
            double ts;
            if (pcap >= 0) { /* the record header: formats._pcap_fields */
                if (d_off[i] < 0 || d_off[i] + 16 > size) {
                    PyErr_SetString(PyExc_ValueError, "decode: a record lies beyond the buffer");
                    goto done;
                }
                const u8 *h = p + d_off[i];
                i64 sec = pcap ? le32(h) : be32(h), frac = pcap ? le32(h + 4) : be32(h + 4);
                caplen = pcap ? le32(h + 8) : be32(h + 8);
                origlen = pcap ? le32(h + 12) : be32(h + 12);
                start = d_off[i] + 16;
                ts = (double)sec + (double)frac / (double)tsdiv;
                lt = pcap_lt;
                frame_no = i + 1;
            } else {
                start = d_off[i];
                caplen = d_cap[i];
                origlen = d_orig[i];
                ts = d_ts[i];
                lt = d_lt[i];
                frame_no = d_frame[i];
            }
            const i64 ce = start + caplen;
            const i64 we = start + (origlen > caplen ? origlen : caplen);
            if (start < 0 || caplen < 0 || ce > size) {
                PyErr_SetString(PyExc_ValueError, "decode: a frame lies beyond the buffer");
                goto done;
            }
            if (!le || le->lt != lt) {
                int sup = lt == 0 || lt == 1 || lt == 108 || lt == 113 || lt == 276 || lt == 101 || lt == 12 ||
                          lt == 14 || lt == 228 || lt == 229;
                le = lt_entry(&c, lt, sup);
                if (!le) {
                    PyErr_NoMemory();
                    goto done;
                }
            }
            le->frames++;
            /* ---- link layer */
            i64 net;
            int ver = 0;
            if (lt == 1) {
                if (start + 14 > ce) {
                    le->cut_l2++;
                    continue;
                }
                u32 et = be16(p + start + 12);
                net = start + 14;
                int cut = 0;
                for (int k = 0; k < 3; k++) {
                    if (et != 0x8100 && et != 0x88A8 && et != 0x9100)
                        break;
                    if (net + 4 > ce) {
                        cut = 1;
                        break;
                    }
                    et = be16(p + net + 2);
                    net += 4;
                }
                if (cut) {
                    le->cut_l2++;
                    continue;
                }
                ver = et == 0x0800 ? 4 : et == 0x86DD ? 6 : 0;
            } else if (lt == 113 || lt == 276) {
                i64 hl = lt == 113 ? 16 : 20;
                if (start + hl > ce) {
                    le->cut_l2++;
                    continue;
                }
                u32 et = be16(p + start + (lt == 113 ? 14 : 0));
                net = start + hl;
                ver = et == 0x0800 ? 4 : et == 0x86DD ? 6 : 0;
            } else if (lt == 0 || lt == 108) {
                if (start + 4 > ce) {
                    le->cut_l2++;
                    continue;
                }
                i64 af = be32(p + start);
                if (lt == 0) {
                    i64 l = le32(p + start);
                    if (l == 2 || af_inet6(l))
                        af = l;
                }
                net = start + 4;
                ver = af == 2 ? 4 : af_inet6(af) ? 6 : 0;
            } else if (le->supported) { /* raw IP */
                if (start + 1 > ce) {
                    le->cut_l2++;
                    continue;
                }
                net = start;
                u32 nib = p[start] >> 4;
                ver = nib == 4 ? 4 : nib == 6 ? 6 : 0;
            } else {
                continue; /* counted as unsupported */
            }
            if (!ver) {
                le->not_ip++;
                continue;
            }
            /* ---- IP */
            i64 l4, iplen;
            u64 src = 0, dst = 0;
            V6Cand *vc = NULL;
            if (ver == 4) {
                if (net + 20 > ce) {
                    c.ip4[0]++;
                    continue;
                }
                const u8 *h = p + net;
                i64 ihl = (i64)(h[0] & 15) * 4, tot = be16(h + 2);
                if ((h[0] >> 4) != 4 || ihl < 20 || !(tot >= ihl || tot == 0)) {
                    c.ip4[1]++;
                    continue;
                }
                if (be16(h + 6) & 0x1FFF) {
                    c.ip4[2]++;
                    continue;
                }
                if (h[9] != 6) {
                    c.ip4[3]++;
                    continue;
                }
                if (tot == 0) /* a TSO/GSO super-segment captured before segmentation */
                    tot = we - net;
                src = be32(h + 12);
                dst = be32(h + 16);
                l4 = net + ihl;
                iplen = tot - ihl;
            } else {
                if (net + 40 > ce) {
                    c.v6_cut0++;
                    continue;
                }
                if ((p[net] >> 4) != 6) {
                    c.v6_bad++;
                    continue;
                }
                i64 pl = be16(p + net + 4);
                u32 nh = p[net + 6];
                i64 pos = net + 40;
                int drop = 0;
                for (int k = 0; k < MAX_V6_EXT; k++) {
                    if (!is_v6_ext(nh))
                        break;
                    if (pos + 8 > ce) {
                        c.v6_cut[k]++;
                        drop = 1;
                        break;
                    }
                    i64 hl = nh == 44 ? 8 : nh == 51 ? ((i64)p[pos + 1] + 2) * 4 : ((i64)p[pos + 1] + 1) * 8;
                    u32 fragoff = nh == 44 ? be16(p + pos + 2) >> 3 : 0;
                    nh = p[pos];
                    pos += hl;
                    if (fragoff) {
                        c.v6_frag[k]++;
                        drop = 1;
                        break;
                    }
                }
                if (drop)
                    continue;
                if (is_v6_ext(nh)) {
                    c.v6_ext++;
                    continue;
                }
                if (nh != 6) {
                    c.v6_not_tcp++;
                    continue;
                }
                iplen = (pl > 0 ? net + 40 + pl : we) - pos;
                l4 = pos;
                vc = &cand[ncand++];
                vc->src = p + net + 8;
                vc->dst = p + net + 24;
                vc->row = -1;
            }
            /* ---- TCP */
            if (l4 + 20 > ce) {
                c.tcp_cut++;
                continue;
            }
            const u8 *t = p + l4;
            i64 hlen = (i64)(t[12] >> 4) * 4;
            i64 plen = iplen - hlen;
            if (hlen < 20 || plen < 0) {
                c.tcp_bad++;
                continue;
            }
            u8 fl = t[13];
            o_ts[m] = ts;
            o_frame[m] = frame_no;
            o_src[m] = src;
            o_dst[m] = dst;
            o_sport[m] = (uint16_t)be16(t);
            o_dport[m] = (uint16_t)be16(t + 2);
            o_seq[m] = be32(t + 4);
            o_ack[m] = be32(t + 8);
            o_flags[m] = fl;
            o_win[m] = (uint16_t)be16(t + 14);
            o_plen[m] = (int32_t)plen;
            i64 opt_end = l4 + hlen;
            int cutopt = opt_end > ce;
            o_opt_cut[m] = (u8)cutopt;
            c.opt_cut += cutopt;
            Opts o = {0, 0, 0, 0, 0, -1};
            options(p, l4 + 20, cutopt ? ce : opt_end, fl, &o);
            o_has_ts[m] = o.has_ts;
            o_tsval[m] = o.tsval;
            o_tsecr[m] = o.tsecr;
            o_mss[m] = o.mss;
            o_wscale[m] = o.wscale;
            o_sackok[m] = o.sackok;
            if (vc)
                vc->row = m;
            m++;
        }
        /* IPv6 addresses of the chunk enter the table in sorted order (np.unique) */
        if (ncand) {
            Py_ssize_t np_ = 0;
            for (Py_ssize_t k = 0; k < ncand; k++) {
                ptrs[np_++] = cand[k].src;
                ptrs[np_++] = cand[k].dst;
            }
            qsort(ptrs, (size_t)np_, sizeof(u8 *), cmp16);
            for (Py_ssize_t k = 0; k < np_; k++) {
                if (k && !memcmp(ptrs[k], ptrs[k - 1], 16))
                    continue;
                if (v6_find(&tab, ptrs[k], 1) == -2) {
                    PyErr_NoMemory();
                    goto done;
                }
            }
            for (Py_ssize_t k = 0; k < ncand; k++)
                if (cand[k].row >= 0) {
                    o_src[cand[k].row] = (1ULL << 32) + (u64)v6_find(&tab, cand[k].src, 0);
                    o_dst[cand[k].row] = (1ULL << 32) + (u64)v6_find(&tab, cand[k].dst, 0);
                }
        }
        if (emit_chunk(&c, events, unsup) < 0)
            goto done;
    }
    v6list = PyList_New(tab.n);
    if (!v6list)
        goto done;
    for (Py_ssize_t k = 0; k < tab.n; k++) {
        PyObject *s = PyBytes_FromStringAndSize((const char *)tab.keys + 16 * k, 16);
        if (!s)
            goto done;
        PyList_SET_ITEM(v6list, k, s);
    }
    res = Py_BuildValue("(LOOO)", (long long)m, events, unsup, v6list);
done:
    Py_XDECREF(events);
    Py_XDECREF(unsup);
    Py_XDECREF(v6list);
    free(c.lt);
    free(tab.keys);
    free(tab.slot);
    free(cand);
    free(ptrs);
    buf_release(in, 7);
    buf_release(out, N_COLS);
    return res;
}

/* ---- flows (flows.flow_order) -------------------------------------------------------- */

#define K1 0x9E3779B97F4A7C15ULL
#define K2 0xC2B2AE3D27D4EB4FULL

typedef struct {
    u64 lo, hi;
    u32 h;
    i64 count, start;
} Flow;

static const Flow *cmp_flows; /* qsort context (the GIL is held throughout) */

static int cmp_flow(const void *a, const void *b)
{
    const Flow *f = cmp_flows;
    const Flow *x = &f[*(const int32_t *)a], *y = &f[*(const int32_t *)b];
    if (x->h != y->h)
        return x->h < y->h ? -1 : 1;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    if (x->hi != y->hi)
        return x->hi < y->hi ? -1 : 1;
    return 0;
}

/* ts order with NaN last, as numpy sorts */
static inline int ts_less(double a, double b) { return a < b || (isnan(b) && !isnan(a)); }

/* stable merge sort of idx[0..n) by key ts (tmp: n items of scratch) */
static void msort(i64 *idx, double *ts, i64 *ti, double *tt, i64 n)
{
    if (n < 2)
        return;
    i64 h = n / 2;
    msort(idx, ts, ti, tt, h);
    msort(idx + h, ts + h, ti, tt, n - h);
    if (!ts_less(ts[h], ts[h - 1]))
        return;
    memcpy(ti, idx, (size_t)h * 8);
    memcpy(tt, ts, (size_t)h * 8);
    i64 i = 0, j = h, k = 0;
    while (i < h && j < n) {
        if (ts_less(ts[j], tt[i])) {
            idx[k] = idx[j];
            ts[k++] = ts[j++];
        } else {
            idx[k] = ti[i];
            ts[k++] = tt[i++];
        }
    }
    while (i < h) {
        idx[k] = ti[i];
        ts[k++] = tt[i++];
    }
}

/* flow_order(src, dst, sport, dport, ts, hash_mask, order, fstart, d, ts_o) -> number of flows
 * Packets grouped by endpoint pair (exactly), flows ordered by (32-bit hash & hash_mask,
 * lower endpoint, higher endpoint), packets of a flow in capture order, then in time
 * order where capture order went back in time. Fills order (int64), fstart (bool, flow
 * order), d (int8, capture order) and ts_o (float64, flow order). */
static PyObject *flow_order(PyObject *self, PyObject *args)
{
    PyObject *o[10];
    unsigned long mask;
    if (!PyArg_ParseTuple(args, "OOOOOkOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &mask, &o[5], &o[6], &o[7], &o[8]))
        return NULL;
    Buf b[9];
    memset(b, 0, sizeof b);
    PyObject *res = NULL;
    Flow *fl = NULL;
    int32_t *slot = NULL, *fid = NULL, *rank = NULL;
    i64 *ti = NULL;
    double *tt = NULL;
    if (buf_get(o[0], &b[0], 8, -1, 0, "src") < 0)
        goto done;
    Py_ssize_t n = b[0].v.len / 8;
    static const Py_ssize_t items[9] = {8, 8, 2, 2, 8, 8, 1, 1, 8};
    static const char *names[9] = {"src", "dst", "sport", "dport", "ts", "order", "fstart", "d", "ts_o"};
    for (int k = 1; k < 9; k++)
        if (buf_get(o[k], &b[k], items[k], n, k >= 5, names[k]) < 0)
            goto done;
    const u64 *src = b[0].v.buf, *dst = b[1].v.buf;
    const uint16_t *sp = b[2].v.buf, *dp = b[3].v.buf;
    const double *ts = b[4].v.buf;
    i64 *order = b[5].v.buf;
    u8 *fstart = b[6].v.buf;
    int8_t *dd = b[7].v.buf;
    double *ts_o = b[8].v.buf;

    fid = big_malloc(sizeof(int32_t) * (size_t)(n + 1));
    Py_ssize_t nslot = 4096, nf = 0, fcap = 1024;
    slot = calloc((size_t)nslot, sizeof(int32_t));
    fl = malloc(sizeof(Flow) * (size_t)fcap);
    if (!fid || !slot || !fl) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        u64 es = src[i] << 16 | sp[i], ed = dst[i] << 16 | dp[i];
        u64 lo = es < ed ? es : ed, hi = es < ed ? ed : es;
        dd[i] = es > ed;
        u64 hh = lo * K1 + (hi ^ (hi >> 29)) * K2;
        hh ^= hh >> 31;
        u32 h = (u32)(hh >> 32);
        u64 s = (hh ^ (hh >> 17) ^ lo) & (u64)(nslot - 1);
        for (;;) {
            int32_t f = slot[s];
            if (!f) {
                if (nf == fcap) {
                    fcap *= 2;
                    Flow *nfl = realloc(fl, sizeof(Flow) * (size_t)fcap);
                    if (!nfl) {
                        PyErr_NoMemory();
                        goto done;
                    }
                    fl = nfl;
                }
                fl[nf].lo = lo;
                fl[nf].hi = hi;
                fl[nf].h = h & (u32)mask;
                fl[nf].count = 0;
                slot[s] = (int32_t)(++nf);
                f = (int32_t)nf;
                if (nf * 2 > nslot) { /* rehash */
                    Py_ssize_t ns = nslot * 4;
                    int32_t *ss = calloc((size_t)ns, sizeof(int32_t));
                    if (!ss) {
                        PyErr_NoMemory();
                        goto done;
                    }
                    for (Py_ssize_t j = 0; j < nf; j++) {
                        u64 l2 = fl[j].lo, h2 = fl[j].hi;
                        u64 x = l2 * K1 + (h2 ^ (h2 >> 29)) * K2;
                        x ^= x >> 31;
                        u64 t = (x ^ (x >> 17) ^ l2) & (u64)(ns - 1);
                        while (ss[t])
                            t = (t + 1) & (u64)(ns - 1);
                        ss[t] = (int32_t)(j + 1);
                    }
                    free(slot);
                    slot = ss;
                    nslot = ns;
                }
            } else if (fl[f - 1].lo != lo || fl[f - 1].hi != hi) {
                s = (s + 1) & (u64)(nslot - 1);
                continue;
            }
            fid[i] = f - 1;
            fl[f - 1].count++;
            break;
        }
    }
    rank = big_malloc(sizeof(int32_t) * (size_t)(nf + 1));
    if (!rank) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < nf; j++)
        rank[j] = (int32_t)j;
    cmp_flows = fl;
    qsort(rank, (size_t)nf, sizeof(int32_t), cmp_flow);
    i64 pos = 0;
    for (Py_ssize_t r = 0; r < nf; r++) {
        Flow *f = &fl[rank[r]];
        f->start = pos;
        pos += f->count;
    }
    memset(fstart, 0, (size_t)n);
    for (Py_ssize_t r = 0; r < nf; r++)
        fstart[fl[rank[r]].start] = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Flow *f = &fl[fid[i]];
        i64 k = f->start++;
        order[k] = i;
        ts_o[k] = ts[i];
    }
    /* capture order is time order except across CPUs/interfaces: repair within flows */
    i64 a = 0;
    for (Py_ssize_t k = 1; k <= n; k++) {
        if (k == n || fstart[k]) {
            int back = 0;
            for (i64 j = a + 1; j < k; j++)
                if (ts_o[j] < ts_o[j - 1]) {
                    back = 1;
                    break;
                }
            if (back) {
                if (!ti) {
                    ti = big_malloc(sizeof(i64) * (size_t)n);
                    tt = big_malloc(sizeof(double) * (size_t)n);
                    if (!ti || !tt) {
                        PyErr_NoMemory();
                        goto done;
                    }
                }
                msort(order + a, ts_o + a, ti, tt, k - a);
            }
            a = k;
        }
    }
    res = PyLong_FromSsize_t(nf);
done:
    free(fl);
    free(slot);
    free(fid);
    free(rank);
    free(ti);
    free(tt);
    buf_release(b, 9);
    return res;
}

/* ---- per-segment facts (flows._facts_numpy) ------------------------------------------- */

#define LOW (-((i64)1 << 40))
#define EARLY_STEPS 8
#define BIG INT64_MAX

enum { S_STARTS, S_FLOW, S_FIRST_SYN, S_SECOND_SYN, S_LAST_SYN, S_N_SYN, S_ANS, S_FIRST_SA, S_N_SYNACK,
       S_N_OLD_ACK, S_N_RST_PRE, S_FIN_O, S_FIN_R, S_RST_O, S_RST_R, S_TERM, S_TS_O, S_TS_R, S_OBYTES,
       S_RBYTES, S_HLEN, S_END_O, S_END_R, S_STATE, N_SEG };

typedef struct {
    int seen_i, seen_q, seen_d, seen_a, syn_ok, fin_ok, rst_ok, adv_ok;
    i64 syn_v, fin_v, rst_v, adv_max, n_rexmit, n_zero_win;
} Side;

static inline int scaled(i64 k)
{
    while (k >= 10 && k % 10 == 0)
        k /= 10;
    return k == 1;
}

typedef struct {
    i64 ls_pos, ls_d, ls_seq, la_pos, la_d, la_seq;
} Boundary;

static inline int bd_step(Boundary *bd, i64 i, int fst, i64 d, u32 cls, i64 s)
{
    int start = 0;
    if (fst) {
        bd->ls_pos = -1;
        bd->la_pos = -1;
        start = 1;
    }
    if (cls == 0x02) {
        if (bd->ls_pos < 0 || bd->ls_d != d || bd->ls_seq != s)
            start = 1;
        bd->ls_pos = i;
        bd->ls_d = d;
        bd->ls_seq = s;
    } else if (cls == 0x12) {
        int in_scope = bd->la_pos >= 0 && bd->la_pos > bd->ls_pos;
        int same = in_scope && bd->la_seq == s && bd->la_d == d;
        if (!same && (in_scope || bd->ls_pos < 0))
            start = 1;
        bd->la_pos = i;
        bd->la_d = d;
        bd->la_seq = s;
    }
    return start;
}

/* segment_facts(order, fstart, d, flags, seq, ack, plen, has_ts, win, table)
 *   -> (nseg, columns, letters)
 * Packets in flow order (order: rows of the capture-order columns flags/seq/ack/plen/
 * has_ts/win; fstart and d in flow order). Per segment, int64 columns (bytearrays) in the
 * S_* order: positions are absolute (none: BIG for firsts, -1 for lasts), ends of the
 * sequence spaces are uint32 values stored as int64, the state is Zeek's joint state |
 * completeness << 6 | established << 12. letters: the Zeek history letters, segment after
 * segment (S_HLEN per segment). */
static PyObject *segment_facts(PyObject *self, PyObject *args)
{
    PyObject *o[10];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9]))
        return NULL;
    Buf b[10];
    memset(b, 0, sizeof b);
    Grow g[N_SEG + 1];
    memset(g, 0, sizeof g);
    PyObject *res = NULL, *cols = NULL;
    void *gather = NULL;
    if (buf_get(o[0], &b[0], 8, -1, 0, "order") < 0)
        goto done;
    Py_ssize_t n = b[0].v.len / 8;
    static const Py_ssize_t items[10] = {8, 1, 1, 1, 4, 4, 4, 1, 2, 1};
    static const char *names[10] = {"order", "fstart", "d", "flags", "seq", "ack", "plen", "has_ts", "win", "table"};
    for (int k = 1; k < 10; k++)
        if (buf_get(o[k], &b[k], items[k], k == 9 ? 4096 : n, 0, names[k]) < 0)
            goto done;
    const i64 *order = b[0].v.buf;
    const u8 *fst = b[1].v.buf, *dir = b[2].v.buf, *table = b[9].v.buf;
    /* The columns in flow order first: one loop of independent loads (the CPU overlaps
     * their cache misses), then the segment pass reads memory in order. */
    gather = big_malloc((size_t)n * 16 + 16);
    if (!gather) {
        PyErr_NoMemory();
        goto done;
    }
    u32 *seq = (u32 *)gather, *ack = seq + n;
    int32_t *plen = (int32_t *)(ack + n);
    uint16_t *win = (uint16_t *)(plen + n);
    u8 *flags = (u8 *)(win + n), *hts = flags + n;
    {
        const u8 *c_flags = b[3].v.buf, *c_hts = b[7].v.buf;
        const u32 *c_seq = b[4].v.buf, *c_ack = b[5].v.buf;
        const int32_t *c_plen = b[6].v.buf;
        const uint16_t *c_win = b[8].v.buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            i64 r = order[i];
            if (r < 0 || r >= n) {
                PyErr_SetString(PyExc_ValueError, "segment_facts: order out of range");
                goto done;
            }
            flags[i] = c_flags[r];
            seq[i] = c_seq[r];
            ack[i] = c_ack[r];
            plen[i] = c_plen[r];
            hts[i] = c_hts[r];
            win[i] = c_win[r];
        }
    }
    Py_ssize_t est = n / 6 + 16;
    for (int k = 0; k < N_SEG; k++)
        if (grow_init(&g[k], 8, est) < 0)
            goto done;
    if (grow_init(&g[N_SEG], 1, n + 16) < 0)
        goto done;
    Grow *let = &g[N_SEG];
#define F(i) flags[i]
#define SEQ(i) ((i64)seq[i])
#define PUT(k, v)                            \
    do {                                     \
        if (grow_i64(&g[k], (v)) < 0)        \
            goto done;                       \
    } while (0)
#define LETTER(c)                            \
    do {                                     \
        u8 *q_ = grow_slot(let);             \
        if (!q_)                             \
            goto done;                       \
        *q_ = (u8)(c);                       \
        hlen++;                              \
    } while (0)
    Boundary bd = {-1, 0, 0, -1, 0, 0};
    Py_ssize_t nseg = 0;
    i64 flow = -1;
    if (n)
        bd_step(&bd, 0, fst[0], dir[0], F(0) & 0x16, SEQ(0));
    i64 s0 = 0;
    while (s0 < n) {
        if (fst[s0])
            flow++;
        /* pass 1: the segment's end, its first SYN / SYN-ACK / packet per side */
        i64 d0 = dir[s0];
        u32 cls0 = F(s0) & 0x16;
        int flipped = cls0 == 0x12;
        i64 orig_dir = flipped ? 1 - d0 : d0;
        i64 fsyn = -1, fsa = -1, fo = -1, fr = -1, i = s0;
        for (;;) {
            u32 cls = F(i) & 0x16;
            if (dir[i] == orig_dir) {
                if (fo < 0)
                    fo = i;
                if (cls == 0x02 && fsyn < 0)
                    fsyn = i;
            } else {
                if (fr < 0)
                    fr = i;
                if (cls == 0x12 && fsa < 0)
                    fsa = i;
            }
            i++;
            if (i >= n)
                break;
            u32 c2 = F(i) & 0x16;
            if (bd_step(&bd, i, fst[i], dir[i], c2, (c2 == 0x02 || c2 == 0x12) ? SEQ(i) : 0))
                break;
        }
        i64 s1 = i;
        /* pass 2: everything else */
        int has_sa = fsa >= 0;
        i64 fs_b = fsyn >= 0 ? fsyn : s1, sa_b = has_sa ? fsa : s1;
        i64 isn1 = fsyn >= 0 ? (SEQ(fsyn) + 1) & 0xFFFFFFFF : 0;
        i64 base_o = fsyn >= 0 ? SEQ(fsyn) : (fo >= 0 ? SEQ(fo) : 0);
        i64 base_r = has_sa ? SEQ(fsa) : (fr >= 0 ? SEQ(fr) : 0);
        i64 n_syn = 0, syn2 = -1, lsyn = -1, ans = -1, n_sa = 0, n_old = 0, n_rst_pre = 0;
        i64 fin_o = -1, fin_r = -1, rst_o = -1, rst_r = -1, term = -1, ts_o = -1, ts_r = -1;
        i64 end_o = LOW, end_r = LOW, ob = 0, rb = 0, comp = 0, joint = 0, n_early = 0, hlen = 0;
        int est = 0, seen_o = 0, seen_r = 0, r_answered = 0;
        Side so, sr;
        memset(&so, 0, sizeof so);
        memset(&sr, 0, sizeof sr);
        if (flipped)
            LETTER('^');
        for (i = s0; i < s1; i++) {
            i64 row = i;
            u32 f = flags[row];
            int io = dir[i] == orig_dir;
            i64 pl = (u32)plen[row];
            i64 s = seq[row];
            u32 cls = f & 0x16;
            int fin = f & 1, syn = (f >> 1) & 1, rst = (f >> 2) & 1, ackf = (f >> 4) & 1;
            int data = pl > 0;
            if (io) {
                ob += pl;
                if (cls == 0x02) {
                    n_syn++;
                    if (n_syn == 2)
                        syn2 = i;
                    lsyn = i;
                }
                if (ackf && (f & 6) == 0 && i > sa_b)
                    est = 1;
            } else {
                rb += pl;
                if (ans < 0 && i > fs_b)
                    ans = i;
                if (cls == 0x12)
                    n_sa++;
                if ((f & 0x16) == 0x10 && fs_b < i && i < sa_b && (i64)ack[row] != isn1)
                    n_old++;
            }
            if (rst) {
                if (io) {
                    if (i < sa_b)
                        n_rst_pre++;
                    if (i > sa_b && rst_o < 0)
                        rst_o = i;
                } else if (i > sa_b && rst_r < 0)
                    rst_r = i;
            } else if (fin) {
                if (io) {
                    if (fin_o < 0)
                        fin_o = i;
                } else if (fin_r < 0)
                    fin_r = i;
            }
            if ((fin || rst) && term < 0 && (i > sa_b || !has_sa))
                term = i;
            if (cls == 0x02)
                comp |= 1;
            else if (cls == 0x12)
                comp |= 2;
            if ((f & 7) == 0 && ackf)
                comp |= 4;
            if (fin)
                comp |= 16;
            if (rst)
                comp |= 32;
            i64 end_rel = LOW;
            if (!rst && (io || i >= sa_b || !has_sa)) {
                i64 rel = (s - (io ? base_o : base_r)) & 0xFFFFFFFF;
                if (rel >= 0x80000000LL)
                    rel -= 0x100000000LL;
                end_rel = rel + pl + syn + fin; /* SYN and FIN take one number each */
            }
            if (io) {
                if (end_rel > end_o)
                    end_o = end_rel;
            } else if (end_rel > end_r)
                end_r = end_rel;
            if (hts[row]) {
                if (io)
                    ts_o = i;
                else
                    ts_r = i;
            }
            /* Zeek's endpoint state machine, for the packets that can change it */
            int step = (f & 7) != 0;
            if (io) {
                if (!seen_o) {
                    seen_o = 1;
                    step = 1;
                }
            } else {
                if (!seen_r) {
                    seen_r = 1;
                    step = 1;
                }
                if (!r_answered) {
                    n_early++;
                    if (n_early <= EARLY_STEPS)
                        step = 1;
                    if ((f & 7) != 0 || data)
                        r_answered = 1;
                }
            }
            if (step) {
                i64 e = (f & 2) | ((f & 16) >> 2) | ((f & 1) << 3) | ((f & 4) << 2);
                if (io)
                    e |= 1;
                if (data)
                    e |= 32;
                joint = table[joint * 64 + e];
            }
            /* Zeek history: at most one letter of update_history(), then T and W */
            Side *sd = io ? &so : &sr;
            int cs = io ? 0 : 32;
            int nflags = syn + fin + rst;
            int letter = 0;
            if (nflags > 1) {
                if (fin && rst) {
                    if (!sd->seen_i) {
                        sd->seen_i = 1;
                        letter = 'I';
                    }
                } else if (!sd->seen_q) {
                    sd->seen_q = 1;
                    letter = 'Q';
                }
            } else if (nflags == 1) {
                if (syn) {
                    if (!sd->syn_ok || sd->syn_v != s)
                        letter = ackf ? 'H' : 'S';
                    sd->syn_ok = 1;
                    sd->syn_v = s;
                } else if (fin) {
                    if (!sd->fin_ok || sd->fin_v != end_rel)
                        letter = 'F';
                    sd->fin_ok = 1;
                    sd->fin_v = end_rel;
                } else {
                    if (!sd->rst_ok || sd->rst_v != s)
                        letter = 'R';
                    sd->rst_ok = 1;
                    sd->rst_v = s;
                }
            } else if (data) {
                if (!sd->seen_d) {
                    sd->seen_d = 1;
                    letter = 'D';
                }
            } else if (ackf && !sd->seen_a) {
                sd->seen_a = 1;
                letter = 'A';
            }
            if (letter)
                LETTER(letter + cs);
            if ((data || syn || fin) && !rst) {
                if (sd->adv_ok && data && end_rel <= sd->adv_max) {
                    sd->n_rexmit++;
                    if (scaled(sd->n_rexmit))
                        LETTER('T' + cs);
                }
                if (!sd->adv_ok || end_rel > sd->adv_max) {
                    sd->adv_ok = 1;
                    sd->adv_max = end_rel;
                }
            }
            if (win[row] == 0 && !rst) {
                sd->n_zero_win++;
                if (scaled(sd->n_zero_win))
                    LETTER('W' + cs);
            }
        }
        if (ob + rb > 0)
            comp |= 8;
        PUT(S_STARTS, s0);
        PUT(S_FLOW, flow);
        PUT(S_FIRST_SYN, fsyn >= 0 ? fsyn : BIG);
        PUT(S_SECOND_SYN, syn2 >= 0 ? syn2 : BIG);
        PUT(S_LAST_SYN, lsyn);
        PUT(S_N_SYN, n_syn);
        PUT(S_ANS, ans >= 0 ? ans : BIG);
        PUT(S_FIRST_SA, fsa >= 0 ? fsa : BIG);
        PUT(S_N_SYNACK, n_sa);
        PUT(S_N_OLD_ACK, n_old);
        PUT(S_N_RST_PRE, n_rst_pre);
        PUT(S_FIN_O, fin_o >= 0 ? fin_o : BIG);
        PUT(S_FIN_R, fin_r >= 0 ? fin_r : BIG);
        PUT(S_RST_O, rst_o >= 0 ? rst_o : BIG);
        PUT(S_RST_R, rst_r >= 0 ? rst_r : BIG);
        PUT(S_TERM, term >= 0 ? term : BIG);
        PUT(S_TS_O, ts_o);
        PUT(S_TS_R, ts_r);
        PUT(S_OBYTES, ob);
        PUT(S_RBYTES, rb);
        PUT(S_HLEN, hlen);
        PUT(S_END_O, end_o > LOW ? (base_o + end_o) & 0xFFFFFFFF : 0);
        PUT(S_END_R, end_r > LOW ? (base_r + end_r) & 0xFFFFFFFF : 0);
        PUT(S_STATE, joint | comp << 6 | ((has_sa && est) ? 1 << 12 : 0));
        nseg++;
        s0 = s1;
    }
#undef F
#undef SEQ
#undef PUT
#undef LETTER
    cols = PyTuple_New(N_SEG);
    if (!cols)
        goto done;
    for (int k = 0; k < N_SEG; k++) {
        PyObject *x = grow_finish(&g[k]);
        if (!x)
            goto done;
        PyTuple_SET_ITEM(cols, k, x);
    }
    PyObject *letters = grow_finish(&g[N_SEG]);
    if (!letters)
        goto done;
    res = Py_BuildValue("(nON)", nseg, cols, letters);
done:
    Py_XDECREF(cols);
    free(gather);
    for (int k = 0; k <= N_SEG; k++)
        Py_XDECREF(g[k].ba);
    buf_release(b, 10);
    return res;
}

/* ---- tcp_tw_recycle's per-peer cache (model/recycle.py PeerCache) ---------------------- */

/* recycle_checks(order, m, key, w_ts, w_stamp, w_now, c_now, c_tsval, c_has_ts, msl, window, out):
 * the whole tcp_tw_recycle replay of reuse.recycle_verdicts in one pass. Entries
 * 0..m-1 are cache writes (a server entering TIME_WAIT), m.. are checks (SYNs); `order`
 * (int64) visits them sorted by (key, time, writes first); key: int64 per entry; w_*:
 * int64 per write, c_now, c_tsval: int64 per check, c_has_ts: uint8 per check; out:
 * writable int8 per check, set to 0 (keep), 1 (drop: TSval behind the fresh cached one)
 * or 2 (drop_4x: no TSval while a fresh entry exists). A write replaces the key's entry
 * as tcp_remember_stamp() decides (model.recycle.remember_wins); a check reads the entry left
 * by the key's writes before it. won (optional, writable int8 per write): 1 where the
 * key's entry is the write's (TSval, stamp) after it, else 0 — a replay in time windows
 * carries each key's entry (its last such write) to the next window. */
static PyObject *recycle_checks(PyObject *self, PyObject *args)
{
    PyObject *o[10];
    Py_ssize_t m;
    long long msl, window;
    o[9] = Py_None;
    if (!PyArg_ParseTuple(args, "OnOOOOOOOLLO|O", &o[0], &m, &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &msl,
                          &window, &o[8], &o[9]))
        return NULL;
    Buf b[10];
    memset(b, 0, sizeof b);
    PyObject *res = NULL;
    if (buf_get(o[0], &b[0], 8, -1, 0, "order") < 0)
        goto done;
    Py_ssize_t total = b[0].v.len / 8, k = total - m;
    if (m < 0 || k < 0) {
        PyErr_SetString(PyExc_ValueError, "recycle_checks: more writes than entries");
        goto done;
    }
    static const char *names[8] = {"key", "w_ts", "w_stamp", "w_now", "c_now", "c_tsval", "c_has_ts", "out"};
    const Py_ssize_t want[8] = {total, m, m, m, k, k, k, k};
    for (int j = 0; j < 8; j++)
        if (buf_get(j < 7 ? o[1 + j] : o[8], &b[1 + j], j >= 6 ? 1 : 8, want[j], j == 7, names[j]) < 0)
            goto done;
    int8_t *won = NULL;
    if (o[9] != Py_None) {
        if (buf_get(o[9], &b[9], 1, m, 1, "won") < 0)
            goto done;
        won = b[9].v.buf;
    }
    const i64 *order = b[0].v.buf, *key = b[1].v.buf, *w_ts = b[2].v.buf, *w_st = b[3].v.buf, *w_now = b[4].v.buf;
    const i64 *c_now = b[5].v.buf, *c_tsval = b[6].v.buf;
    const u8 *c_has_ts = b[7].v.buf;
    int8_t *out = b[8].v.buf;
    i64 c_ts = 0, c_st = 0, cur = 0;
    int have = 0, started = 0;
    for (Py_ssize_t i = 0; i < total; i++) {
        i64 e = order[i];
        if (e < 0 || e >= total) {
            PyErr_SetString(PyExc_IndexError, "recycle_checks: an entry beyond the entries");
            goto done;
        }
        if (!started || key[e] != cur) {
            cur = key[e];
            started = 1;
            have = 0;
        }
        if (e < m) {
            i64 t = w_ts[e], st = w_st[e];
            int w = 1;
            if (have) {
                u64 d = (u64)(c_ts - t) & 0xFFFFFFFFu;
                w = d == 0 || d >= 0x80000000u || (w_now[e] - c_st > msl && c_st <= st);
            }
            if (w) {
                c_ts = t;
                c_st = st;
            }
            if (won)
                won[e] = c_ts == t && c_st == st;
            have = 1;
        } else {
            Py_ssize_t c = e - m;
            int8_t v = 0;
            if (have && c_now[c] - c_st < msl) {
                if (!c_has_ts[c])
                    v = 2;
                else if ((i64)(int32_t)(u32)((u64)(c_ts - c_tsval[c]) & 0xFFFFFFFFu) > window)
                    v = 1;
            }
            out[c] = v;
        }
    }
    Py_INCREF(Py_None);
    res = Py_None;
done:
    buf_release(b, 10);
    return res;
}

/* ---- Zeek history strings (zeek.strings) ---------------------------------------------- */

/* pad_strings(codes, counts, width) -> bytearray: the letters of segment after segment
 * (uint8; counts: int64 letters per segment) as one zero-padded `width`-byte row each. */
static PyObject *pad_strings(PyObject *self, PyObject *args)
{
    PyObject *o[2];
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "OOn", &o[0], &o[1], &width))
        return NULL;
    Buf b[2];
    memset(b, 0, sizeof b);
    PyObject *res = NULL;
    if (buf_get(o[0], &b[0], 1, -1, 0, "codes") < 0 || buf_get(o[1], &b[1], 8, -1, 0, "counts") < 0)
        goto done;
    const u8 *codes = b[0].v.buf;
    const i64 *counts = b[1].v.buf;
    Py_ssize_t nseg = b[1].v.len / 8, total = 0;
    for (Py_ssize_t k = 0; k < nseg; k++) {
        if (counts[k] < 0 || counts[k] > width) {
            PyErr_SetString(PyExc_ValueError, "pad_strings: a count beyond the width");
            goto done;
        }
        total += counts[k];
    }
    if (total != b[0].v.len || width < 1 || nseg > PY_SSIZE_T_MAX / width) {
        PyErr_SetString(PyExc_ValueError, "pad_strings: counts do not add up to the letters");
        goto done;
    }
    res = PyByteArray_FromStringAndSize(NULL, nseg * width);
    if (!res)
        goto done;
    u8 *out = (u8 *)PyByteArray_AS_STRING(res);
    huge_hint(out, (size_t)(nseg * width));
    for (Py_ssize_t k = 0; k < nseg; k++, out += width) {
        memcpy(out, codes, (size_t)counts[k]);
        memset(out + counts[k], 0, (size_t)(width - counts[k]));
        codes += counts[k];
    }
done:
    buf_release(b, 2);
    return res;
}

static PyMethodDef methods[] = {
    {"pcap_scan", pcap_scan, METH_VARARGS, "believable pcap records, checked while walking"},
    {"epb_walk", epb_walk, METH_VARARGS, "a run of pcapng Enhanced Packet Blocks"},
    {"decode", decode, METH_VARARGS, "link, IP and TCP headers of every frame"},
    {"flow_order", flow_order, METH_VARARGS, "packets grouped by flow, in time order"},
    {"segment_facts", segment_facts, METH_VARARGS, "per-segment facts of packets in flow order"},
    {"recycle_checks", recycle_checks, METH_VARARGS, "the tcp_tw_recycle replay: writes and checks in one pass"},
    {"pad_strings", pad_strings, METH_VARARGS, "letters of each segment as zero-padded rows"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_ccap", "The capture reader's loops in C.", -1, methods,
                                     NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ccap(void) { return PyModule_Create(&moddef); }
