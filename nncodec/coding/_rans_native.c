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

static PyMethodDef methods[] = {
    {"encode", rans_encode, METH_VARARGS, "rANS-encode symbol indices back to front; returns the words written."},
    {"decode", rans_decode, METH_VARARGS, "rANS-decode into out; returns the new word pointer or -1."},
    {"ans_decode", ans_decode, METH_VARARGS, "Decode stage 5 (constriction's AnsCoder) into out; returns the new pointer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rans_native",
                                    "Compiled loops of the entropy stages 5 and 6.", -1, methods};

PyMODINIT_FUNC PyInit__rans_native(void) { return PyModule_Create(&module); }
