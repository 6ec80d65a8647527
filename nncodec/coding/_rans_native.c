/* The rANS loops of entropy stage 6, in C (built at install time; optional, a portable Python kernel
 * stands in when no compiler was available). Same contract as nncodec/coding/rans_portable.py:
 *
 *   encode(index u8/u16[n], freq u32[K], cum u32[K], p, words u16[>=n] (out), states u64[4] (in/out),
 *          index_size = 2) -> n_out
 *   decode(words u16[m], ptr, states u64[4] (in/out), lut u16[2**p], freq u32[K], cum u32[K], p, first,
 *          symbols (K items), out (items of the same size)) -> new ptr, or -1 when the words run out
 *
 * Symbol i uses state i % 4; states live in [2**16, 2**32); renormalization words are 16 bits.
 *
 * And the decoder of entropy stage 5 (the bitstream of constriction 0.5's AnsCoder: 32-bit words, one
 * 64-bit state, 24-bit probabilities; the model's cdf is built by the caller, see ans_stage.py):
 *
 *   ans_decode(words u32[m], ptr, state u64[1] (in/out), cdf u32[K+1], bucket u32[2**16 + 1], symbols,
 *              out) -> new ptr (words are read from words[ptr - 1] down to words[0])
 *
 * The loops run without the GIL and never index outside their buffers (table entries are checked), and
 * return -1 when the words run out; the caller turns that into a CorruptError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int check_size(Py_buffer *b, Py_ssize_t itemsize, Py_ssize_t min_items, const char *what) {
    if (b->len % itemsize || b->len / itemsize < min_items) {
        PyErr_Format(PyExc_ValueError, "rans kernel: %s holds %zd bytes, needs at least %zd items of %zd bytes",
                     what, b->len, min_items, itemsize);
        return -1;
    }
    return 0;
}

/* The symbol item size (1, 2, 4 or 8) shared by ``symbols`` (k items) and ``out``, or -1 with an error set. */
static Py_ssize_t item_size(Py_buffer *symbols, Py_buffer *out, Py_ssize_t k, const char *who) {
    Py_ssize_t itemsize = k > 0 ? symbols->len / k : 0;
    if (!(itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8) || symbols->len != k * itemsize
        || out->len % itemsize) {
        PyErr_Format(PyExc_ValueError, "%s kernel: symbols and out must hold items of 1, 2, 4 or 8 bytes", who);
        return -1;
    }
    return itemsize;
}

/* Runs LOOP(T) with T the unsigned type of ``itemsize`` bytes. */
#define BY_ITEMSIZE(LOOP)                                                               \
    switch (itemsize) {                                                                 \
        case 1: LOOP(uint8_t); break;                                                   \
        case 2: LOOP(uint16_t); break;                                                  \
        case 4: LOOP(uint32_t); break;                                                  \
        default: LOOP(uint64_t); break;                                                 \
    }

static PyObject *rans_encode(PyObject *self, PyObject *args) {
    Py_buffer index, freq, cum, words, states;
    int p, index_size = 2;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*iw*w*|i", &index, &freq, &cum, &p, &words, &states, &index_size))
        return NULL;
    Py_ssize_t n = index_size == 1 ? index.len : index.len / 2, k = freq.len / 4;
    if (p < 1 || p > 16 || (index_size != 1 && index_size != 2)) {
        PyErr_SetString(PyExc_ValueError, "rans kernel: p outside 1..16 or index_size not 1 or 2");
        goto done;
    }
    if (check_size(&index, index_size, 0, "index") || check_size(&freq, 4, 1, "freq") || check_size(&cum, 4, k, "cum")
        || check_size(&words, 2, n, "words") || check_size(&states, 8, 4, "states")) goto done;
    {
        const uint16_t *ix16 = index.buf;
        const uint8_t *ix8 = index.buf;
        const uint32_t *fr = freq.buf, *cu = cum.buf;
        uint16_t *out = words.buf;
        uint64_t st[4];
        memcpy(st, states.buf, sizeof st);
        Py_ssize_t n_out = 0, bad = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = n - 1; i >= 0; i--) {
            uint32_t s = index_size == 1 ? ix8[i] : ix16[i];
            if (s >= (uint64_t)k) { bad = 1; break; }
            uint64_t f = fr[s], x = st[i & 3];
            if (x >= ((uint64_t)1 << (32 - p)) * f) {
                out[n_out++] = (uint16_t)(x & 0xFFFF);
                x >>= 16;
            }
            st[i & 3] = ((x / f) << p) + (x % f) + cu[s];
        }
        Py_END_ALLOW_THREADS
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "rans kernel: symbol index outside the alphabet");
            goto done;
        }
        memcpy(states.buf, st, sizeof st);
        result = PyLong_FromSsize_t(n_out);
    }
done:
    PyBuffer_Release(&index); PyBuffer_Release(&freq); PyBuffer_Release(&cum);
    PyBuffer_Release(&words); PyBuffer_Release(&states);
    return result;
}

/* One decode step of symbol j (lane state X); a macro so that the symbol copy is typed per item size. */
#define DECODE_STEP(X, J, STOP)                                                               \
    do {                                                                                \
        uint32_t slot = (uint32_t)(X & mask);                                           \
        uint32_t s = lt[slot];                                                          \
        if (s >= (uint32_t)k) { ptr = -2; goto STOP; }                                  \
        X = (uint64_t)fr[s] * (X >> p) + slot - cu[s];                                  \
        if (X < 65536) {                                                                \
            if (ptr >= n_words) { ptr = -1; goto STOP; }                                \
            X = (X << 16) | w[ptr++];                                                   \
        }                                                                               \
        o[J] = sy[s];                                                                   \
    } while (0)

/* Symbols one at a time up to a multiple of four (lane 0), then four at a time with the four lane states
 * in registers (independent chains the CPU overlaps), then the rest; symbol j uses lane (first + j) & 3. */
#define DECODE_LOOP(T)                                                                  \
    do {                                                                                \
        const T *sy = (const T *)symbols.buf;                                           \
        T *o = (T *)out.buf;                                                            \
        Py_ssize_t j = 0;                                                               \
        for (; j < n_out && ((first + j) & 3); j++) {                                   \
            unsigned lane = (unsigned)((first + j) & 3);                                \
            uint64_t x = st[lane];                                                      \
            DECODE_STEP(x, j, stop_##T);                                                          \
            st[lane] = x;                                                               \
        }                                                                               \
        {                                                                               \
            uint64_t x0 = st[0], x1 = st[1], x2 = st[2], x3 = st[3];                    \
            for (; j + 4 <= n_out; j += 4) {                                            \
                DECODE_STEP(x0, j, stop_##T);                                                     \
                DECODE_STEP(x1, j + 1, stop_##T);                                                 \
                DECODE_STEP(x2, j + 2, stop_##T);                                                 \
                DECODE_STEP(x3, j + 3, stop_##T);                                                 \
            }                                                                           \
            st[0] = x0; st[1] = x1; st[2] = x2; st[3] = x3;                             \
        }                                                                               \
        for (; j < n_out; j++) {                                                        \
            unsigned lane = (unsigned)((first + j) & 3);                                \
            uint64_t x = st[lane];                                                      \
            DECODE_STEP(x, j, stop_##T);                                                          \
            st[lane] = x;                                                               \
        }                                                                               \
    stop_##T:;                                                                          \
    } while (0)

static PyObject *rans_decode(PyObject *self, PyObject *args) {
    Py_buffer words, states, lut, freq, cum, symbols, out;
    Py_ssize_t ptr, first;
    int p;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*nw*y*y*y*iny*w*", &words, &ptr, &states, &lut, &freq, &cum, &p, &first,
                          &symbols, &out)) return NULL;
    Py_ssize_t k = freq.len / 4, itemsize;
    if (p < 1 || p > 16) {
        PyErr_SetString(PyExc_ValueError, "rans kernel: p outside 1..16");
        goto done;
    }
    if (check_size(&words, 2, 0, "words") || check_size(&states, 8, 4, "states")
        || check_size(&lut, 2, (Py_ssize_t)1 << p, "lut") || check_size(&freq, 4, 1, "freq")
        || check_size(&cum, 4, k, "cum") || (itemsize = item_size(&symbols, &out, k, "rans")) < 0) goto done;
    if (ptr < 0 || ptr > words.len / 2) {
        PyErr_SetString(PyExc_ValueError, "rans kernel: word pointer outside the words");
        goto done;
    }
    {
        const uint16_t *w = words.buf, *lt = lut.buf;
        const uint32_t *fr = freq.buf, *cu = cum.buf;
        const uint64_t mask = ((uint64_t)1 << p) - 1;
        Py_ssize_t n_words = words.len / 2, n_out = out.len / itemsize;
        uint64_t st[4];
        memcpy(st, states.buf, sizeof st);
        Py_BEGIN_ALLOW_THREADS
        BY_ITEMSIZE(DECODE_LOOP);
        Py_END_ALLOW_THREADS
        if (ptr == -2) {
            PyErr_SetString(PyExc_ValueError, "rans kernel: lut entry outside the alphabet");
            goto done;
        }
        memcpy(states.buf, st, sizeof st);
        result = PyLong_FromSsize_t(ptr);
    }
done:
    PyBuffer_Release(&words); PyBuffer_Release(&states); PyBuffer_Release(&lut); PyBuffer_Release(&freq);
    PyBuffer_Release(&cum); PyBuffer_Release(&symbols); PyBuffer_Release(&out);
    return result;
}

/* Stage 5: symbol s of quantile q is the largest s with cdf[s] <= q; bucket[q >> 8] is that symbol for
 * q = (q >> 8) << 8, so a binary search runs from there to bucket[(q >> 8) + 1]. */
#define ANS_LOOP(T)                                                                     \
    do {                                                                                \
        const T *sy = (const T *)symbols.buf;                                           \
        T *o = (T *)out.buf;                                                            \
        for (Py_ssize_t j = 0; j < n_out; j++) {                                        \
            uint32_t q = (uint32_t)(x & 0xFFFFFF), b = q >> 8;                          \
            uint32_t lo = bk[b], hi = bk[b + 1];                                        \
            if (hi >= (uint32_t)k || lo > hi) { ptr = -2; break; }                      \
            while (lo < hi) {                                                           \
                uint32_t mid = (lo + hi + 1) >> 1;                                      \
                if (cd[mid] <= q) lo = mid; else hi = mid - 1;                          \
            }                                                                           \
            uint32_t left = cd[lo], right = cd[lo + 1];                                 \
            if (left > q || right <= q) { ptr = -2; break; }                            \
            x = (x >> 24) * (uint64_t)(right - left) + (q - left);                      \
            if (x < ((uint64_t)1 << 32) && ptr > 0) x = (x << 32) | w[--ptr];           \
            o[j] = sy[lo];                                                              \
        }                                                                               \
    } while (0)

static PyObject *ans_decode(PyObject *self, PyObject *args) {
    Py_buffer words, state, cdf, bucket, symbols, out;
    Py_ssize_t ptr;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*nw*y*y*y*w*", &words, &ptr, &state, &cdf, &bucket, &symbols, &out))
        return NULL;
    Py_ssize_t k = cdf.len / 4 - 1, itemsize;
    if (check_size(&words, 4, 0, "words") || check_size(&state, 8, 1, "state") || check_size(&cdf, 4, 2, "cdf")
        || check_size(&bucket, 4, (1 << 16) + 1, "bucket")
        || (itemsize = item_size(&symbols, &out, k, "ans")) < 0) goto done;
    if (ptr < 0 || ptr > words.len / 4) {
        PyErr_SetString(PyExc_ValueError, "ans kernel: word pointer outside the words");
        goto done;
    }
    {
        const uint32_t *w = words.buf, *cd = cdf.buf, *bk = bucket.buf;
        Py_ssize_t n_out = out.len / itemsize;
        uint64_t x;
        memcpy(&x, state.buf, sizeof x);
        Py_BEGIN_ALLOW_THREADS
        BY_ITEMSIZE(ANS_LOOP);
        Py_END_ALLOW_THREADS
        if (ptr == -2) {
            PyErr_SetString(PyExc_ValueError, "ans kernel: tables inconsistent");
            goto done;
        }
        memcpy(state.buf, &x, sizeof x);
        result = PyLong_FromSsize_t(ptr);
    }
done:
    PyBuffer_Release(&words); PyBuffer_Release(&state); PyBuffer_Release(&cdf); PyBuffer_Release(&bucket);
    PyBuffer_Release(&symbols); PyBuffer_Release(&out);
    return result;
}


/* ---- Stage 8 (acode, FORMAT.md §16): LZMA-style binary range coder with adaptive 11-bit probabilities.
 * Same contract as nncodec/coding/acode_portable.py:
 *
 *   acode_encode(data u8[], segs i64[n*4] (type, set, offset, count), shift, k, out u8[cap] (out)) -> bytes
 *       written, or -1 when ``cap`` is too small
 *   acode_decode(coded u8[], segs i64[n*4], shift, k, out u8[] (out), info i64[2] (out: word, byte)) -> status
 *       (0 ok, 1 coded bytes run out, 2 first byte not 0, 3 value outside the word type, 4 Exp-Golomb prefix
 *       over the cap, 5 bytes left over or the coder not ending at 0)
 *
 * Segments are checked here again (types, sets, counts filling the buffers), so a bad call is a ValueError,
 * never an out-of-bounds access. The loops run without the GIL.
 */
#define AC_MAX_SETS 16
#define AC_MAX_K 15
#define AC_PREFIX_CAP 18
#define AC_SIG 0
#define AC_SIGN 3
#define AC_GT 6
#define AC_PRE (6 + AC_MAX_K)
#define AC_TREE (AC_PRE + AC_PREFIX_CAP + 1)
#define AC_SET_PROBS (AC_TREE + 255)
#define AC_TOP (1u << 24)

static const int ac_width[6] = {1, 1, 2, 2, 1, 1};
static const int32_t ac_lo[4] = {-128, 0, -32768, 0};
static const int32_t ac_hi[4] = {127, 255, 32767, 65535};

/* Checks the segment table against a buffer of ``len`` bytes; -1 with a ValueError when they do not fit. */
static int ac_check(Py_buffer *segs, Py_ssize_t len, int shift, int k) {
    if (segs->len % 32 || shift < 1 || shift > 8 || k < 0 || k > AC_MAX_K) {
        PyErr_SetString(PyExc_ValueError, "acode kernel: bad segment table, shift or k");
        return -1;
    }
    const int64_t *sg = segs->buf;
    Py_ssize_t n = segs->len / 32, total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t t = sg[4 * i], s = sg[4 * i + 1], off = sg[4 * i + 2], c = sg[4 * i + 3];
        if (t < 0 || t > 5 || s < 0 || s >= AC_MAX_SETS || c < 0 || c > len || off < -65535 || off > 65535
            || (t > 3 && off != 0)) {
            PyErr_SetString(PyExc_ValueError, "acode kernel: bad segment");
            return -1;
        }
        total += (Py_ssize_t)c * ac_width[t];
        if (total > len) break;
    }
    if (total != len) {
        PyErr_SetString(PyExc_ValueError, "acode kernel: segments do not fill the buffer");
        return -1;
    }
    return 0;
}

typedef struct {
    uint64_t low;
    uint32_t range, cache_size;
    uint8_t cache;
    uint8_t *out;
    Py_ssize_t n, cap;
    int overflow;
} ac_enc;

static void ac_shift_low(ac_enc *e) {
    if ((uint32_t)e->low < 0xFF000000u || (e->low >> 32) != 0) {
        uint8_t carry = (uint8_t)(e->low >> 32), temp = e->cache;
        do {
            if (e->n < e->cap) e->out[e->n++] = (uint8_t)(temp + carry); else e->overflow = 1;
            temp = 0xFF;
        } while (--e->cache_size != 0);
        e->cache = (uint8_t)((uint32_t)e->low >> 24);
    }
    e->cache_size++;
    e->low = (uint64_t)((uint32_t)e->low << 8);
}

static inline void ac_enc_bit(ac_enc *e, uint16_t *p, int bit, int shift) {
    uint32_t bound = (e->range >> 11) * (uint32_t)*p;
    if (bit) { e->low += bound; e->range -= bound; *p -= (uint16_t)(*p >> shift); }
    else { e->range = bound; *p += (uint16_t)((2048 - *p) >> shift); }
    while (e->range < AC_TOP) { e->range <<= 8; ac_shift_low(e); }
}

static inline void ac_enc_direct(ac_enc *e, int bit) {
    e->range >>= 1;
    if (bit) e->low += e->range;
    while (e->range < AC_TOP) { e->range <<= 8; ac_shift_low(e); }
}

static PyObject *acode_encode(PyObject *self, PyObject *args) {
    Py_buffer data, segs, out;
    int shift, k;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*iiw*", &data, &segs, &shift, &k, &out)) return NULL;
    if (ac_check(&segs, data.len, shift, k)) goto done;
    if (data.len == 0) { result = PyLong_FromLong(0); goto done; }
    {
        uint16_t *probs = PyMem_Malloc(sizeof(uint16_t) * AC_MAX_SETS * AC_SET_PROBS);
        if (!probs) { PyErr_NoMemory(); goto done; }
        for (int i = 0; i < AC_MAX_SETS * AC_SET_PROBS; i++) probs[i] = 1024;
        ac_enc e = {0, 0xFFFFFFFFu, 1, 0, out.buf, 0, out.len, 0};
        const int64_t *sg = segs.buf;
        const uint8_t *d = data.buf;
        Py_ssize_t nseg = segs.len / 32, pos = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t si = 0; si < nseg && !e.overflow; si++) {
            int t = (int)sg[4 * si];
            uint16_t *pr = probs + sg[4 * si + 1] * AC_SET_PROBS;
            int32_t off = (int32_t)sg[4 * si + 2];
            int64_t count = sg[4 * si + 3];
            int32_t prev1 = 0, prev2 = 0;
            for (int64_t j = 0; j < count; j++) {
                if (t >= 4) {
                    uint32_t b = d[pos++], m = 1;
                    for (int i = 7; i >= 0; i--) {
                        int bit = (b >> i) & 1;
                        if (t == 4) ac_enc_bit(&e, pr + AC_TREE + m - 1, bit, shift); else ac_enc_direct(&e, bit);
                        m = 2 * m + bit;
                    }
                    continue;
                }
                int32_t w;
                if (t == 0) w = (int8_t)d[pos];
                else if (t == 1) w = d[pos];
                else if (t == 2) w = (int16_t)(d[pos] | (d[pos + 1] << 8));
                else w = (int32_t)(d[pos] | (d[pos + 1] << 8));
                pos += ac_width[t];
                int32_t v = w - off;
                ac_enc_bit(&e, pr + AC_SIG + (prev1 != 0) + (prev2 != 0), v != 0, shift);
                if (v) {
                    ac_enc_bit(&e, pr + AC_SIGN + (prev1 == 0 ? 0 : prev1 > 0 ? 1 : 2), v < 0, shift);
                    uint32_t a = (uint32_t)(v < 0 ? -v : v), jj = 1;
                    for (; jj <= (uint32_t)k; jj++) {
                        ac_enc_bit(&e, pr + AC_GT + jj - 1, a > jj, shift);
                        if (a <= jj) break;
                    }
                    if (jj > (uint32_t)k) {
                        uint32_t r1 = a - (uint32_t)k, nb = 0;  /* r + 1 */
                        while ((r1 >> (nb + 1)) != 0) nb++;
                        for (uint32_t i = 0; i < nb; i++) ac_enc_bit(&e, pr + AC_PRE + i, 1, shift);
                        ac_enc_bit(&e, pr + AC_PRE + nb, 0, shift);
                        for (int i = (int)nb - 1; i >= 0; i--) ac_enc_direct(&e, (r1 >> i) & 1);
                    }
                }
                prev2 = prev1; prev1 = v;
            }
        }
        for (int i = 0; i < 5; i++) ac_shift_low(&e);
        Py_END_ALLOW_THREADS
        PyMem_Free(probs);
        result = PyLong_FromSsize_t(e.overflow ? -1 : e.n);
    }
done:
    PyBuffer_Release(&data); PyBuffer_Release(&segs); PyBuffer_Release(&out);
    return result;
}

typedef struct {
    uint32_t code, range;
    const uint8_t *buf;
    Py_ssize_t pos, n;
} ac_dec;

#define AC_NORM(D, FAIL)                                                                  \
    while ((D).range < AC_TOP) {                                                          \
        if ((D).pos >= (D).n) goto FAIL;                                                  \
        (D).range <<= 8;                                                                  \
        (D).code = ((D).code << 8) | (D).buf[(D).pos++];                                  \
    }
#define AC_BIT(D, P, B, FAIL)                                                             \
    do {                                                                                  \
        uint16_t *pp_ = (P);                                                              \
        uint32_t bound_ = ((D).range >> 11) * (uint32_t)*pp_;                             \
        if ((D).code < bound_) { (D).range = bound_; *pp_ += (uint16_t)((2048 - *pp_) >> shift); B = 0; } \
        else { (D).code -= bound_; (D).range -= bound_; *pp_ -= (uint16_t)(*pp_ >> shift); B = 1; } \
        AC_NORM(D, FAIL)                                                                  \
    } while (0)
#define AC_DIRECT(D, B, FAIL)                                                             \
    do {                                                                                  \
        (D).range >>= 1;                                                                  \
        if ((D).code >= (D).range) { (D).code -= (D).range; B = 1; } else B = 0;          \
        AC_NORM(D, FAIL)                                                                  \
    } while (0)

static PyObject *acode_decode(PyObject *self, PyObject *args) {
    Py_buffer coded, segs, out, info;
    int shift, k;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*iiw*w*", &coded, &segs, &shift, &k, &out, &info)) return NULL;
    if (ac_check(&segs, out.len, shift, k) || check_size(&info, 8, 2, "info")) goto done;
    {
        int64_t *inf = info.buf;
        int status = 0;
        Py_ssize_t word = 0;
        ac_dec d = {0, 0xFFFFFFFFu, coded.buf, 5, coded.len};
        if (out.len == 0) {
            inf[0] = 0; inf[1] = 0;
            result = PyLong_FromLong(coded.len ? 5 : 0);
            goto done;
        }
        if (coded.len < 5) { inf[0] = 0; inf[1] = coded.len; result = PyLong_FromLong(1); goto done; }
        if (d.buf[0] != 0) { inf[0] = 0; inf[1] = 0; result = PyLong_FromLong(2); goto done; }
        d.code = ((uint32_t)d.buf[1] << 24) | ((uint32_t)d.buf[2] << 16) | ((uint32_t)d.buf[3] << 8) | d.buf[4];
        uint16_t *probs = PyMem_Malloc(sizeof(uint16_t) * AC_MAX_SETS * AC_SET_PROBS);
        if (!probs) { PyErr_NoMemory(); goto done; }
        for (int i = 0; i < AC_MAX_SETS * AC_SET_PROBS; i++) probs[i] = 1024;
        const int64_t *sg = segs.buf;
        uint8_t *o = out.buf;
        Py_ssize_t nseg = segs.len / 32, at = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t si = 0; si < nseg; si++) {
            int t = (int)sg[4 * si];
            uint16_t *pr = probs + sg[4 * si + 1] * AC_SET_PROBS;
            int32_t off = (int32_t)sg[4 * si + 2];
            int64_t count = sg[4 * si + 3];
            int32_t prev1 = 0, prev2 = 0;
            for (int64_t j = 0; j < count; j++, word++) {
                int b;
                if (t >= 4) {
                    uint32_t m = 1;
                    if (t == 4) for (int i = 0; i < 8; i++) { AC_BIT(d, pr + AC_TREE + m - 1, b, fail_end); m = 2 * m + b; }
                    else for (int i = 0; i < 8; i++) { AC_DIRECT(d, b, fail_end); m = 2 * m + b; }
                    o[at++] = (uint8_t)(m - 256);
                    continue;
                }
                int32_t v = 0;
                AC_BIT(d, pr + AC_SIG + (prev1 != 0) + (prev2 != 0), b, fail_end);
                if (b) {
                    int neg;
                    AC_BIT(d, pr + AC_SIGN + (prev1 == 0 ? 0 : prev1 > 0 ? 1 : 2), neg, fail_end);
                    int32_t a = 1;
                    while (a <= k) {
                        AC_BIT(d, pr + AC_GT + a - 1, b, fail_end);
                        if (!b) break;
                        a++;
                    }
                    if (a > k) {
                        int m = 0;
                        for (;;) {
                            AC_BIT(d, pr + AC_PRE + m, b, fail_end);
                            if (!b) break;
                            if (++m > AC_PREFIX_CAP) { status = 4; goto stop; }
                        }
                        int32_t s = 0;
                        for (int i = 0; i < m; i++) { AC_DIRECT(d, b, fail_end); s = 2 * s + b; }
                        a = k + (1 << m) + s;
                    }
                    v = neg ? -a : a;
                }
                int32_t w = v + off;
                if (w < ac_lo[t] || w > ac_hi[t]) { status = 3; goto stop; }
                o[at] = (uint8_t)(w & 0xFF);
                if (ac_width[t] == 2) o[at + 1] = (uint8_t)((w >> 8) & 0xFF);
                at += ac_width[t];
                prev2 = prev1; prev1 = v;
            }
        }
        if (d.pos != d.n || d.code != 0) status = 5;
        goto stop;
    fail_end:
        status = 1;
    stop:
        Py_END_ALLOW_THREADS
        PyMem_Free(probs);
        inf[0] = word; inf[1] = d.pos;
        result = PyLong_FromLong(status);
    }
done:
    PyBuffer_Release(&coded); PyBuffer_Release(&segs); PyBuffer_Release(&out); PyBuffer_Release(&info);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", rans_encode, METH_VARARGS, "rANS-encode symbol indices back to front; returns the words written."},
    {"decode", rans_decode, METH_VARARGS, "rANS-decode into out; returns the new word pointer or -1."},
    {"ans_decode", ans_decode, METH_VARARGS, "Decode stage 5 (constriction's AnsCoder) into out; returns the new pointer."},
    {"acode_encode", acode_encode, METH_VARARGS, "Range-code stage 8's segments; returns the bytes written or -1."},
    {"acode_decode", acode_decode, METH_VARARGS, "Decode stage 8's segments into out; returns a status (0: ok)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rans_native",
                                    "Compiled loops of the entropy stages 5, 6 and 8.", -1, methods};

PyMODINIT_FUNC PyInit__rans_native(void) { return PyModule_Create(&module); }
