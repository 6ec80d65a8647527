/* The Viterbi search of dependent quantization (nncodec/quant/dependent.py), in C (built at install time;
 * optional: the numpy search in dependent.py stands in, with the same result, when no compiler was available).
 *
 *   viterbi(y f64[n], chain, lam f64, table f64[T], lo i64, out i64[n] (out)) -> None
 *
 * y are the values in steps; chains of ``chain`` consecutive values each start in state 0 of the 4-state
 * machine (FORMAT.md section 15). For each chain it writes the codes of the path of least
 *     sum (y - level)^2 + lam * table[clamp(k - lo, 0, T - 1)]
 * (the rate term only when lam > 0 and T > 0). Candidates, their order and the tie-breaking are those of the
 * numpy search (first minimum wins), so both give the same codes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* predecessors of each next state, in the numpy search's order: (state, parity) ascending by state */
static const int PRED[4][2][2] = {{{0, 0}, {1, 1}}, {{2, 0}, {3, 1}}, {{0, 1}, {1, 0}}, {{2, 1}, {3, 0}}};

static inline double rate_bits(int64_t k, const double *table, Py_ssize_t t, int64_t lo) {
    int64_t i = k - lo;
    if (i < 0) i = 0;
    if (i > (int64_t)t - 1) i = (int64_t)t - 1;
    return table[i];
}

static inline int64_t recon(int64_t k, int q1) {
    return q1 ? 2 * k - ((k > 0) - (k < 0)) : 2 * k;
}

/* One chain of m values: codes into out. bk / bs: scratch of 4 * m entries. */
static void chain_search(const double *y, Py_ssize_t m, double lam, const double *table, Py_ssize_t t,
                         int64_t lo, int64_t *out, int64_t *bk, int8_t *bs) {
    double cost[4] = {0.0, INFINITY, INFINITY, INFINITY};
    int use_rate = lam > 0 && t > 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        double yj = y[j];
        double cb[2][2];
        int64_t kb[2][2];
        for (int q1 = 0; q1 < 2; q1++) {
            int64_t base = (int64_t)floor(q1 ? (yj + 1) / 2 : yj / 2);
            int64_t cands[5] = {base - 1, base, base + 1, base + 2, 0};
            cb[q1][0] = cb[q1][1] = INFINITY;
            kb[q1][0] = kb[q1][1] = 0;
            for (int c = 0; c < (use_rate ? 5 : 4); c++) {
                int64_t k = cands[c];
                double d = yj - (double)recon(k, q1);
                double v = d * d;
                if (use_rate) v = v + lam * rate_bits(k, table, t, lo);
                int p = (int)(k & 1);
                if (v < cb[q1][p]) {
                    cb[q1][p] = v;
                    kb[q1][p] = k;
                }
            }
        }
        double next[4];
        for (int ns = 0; ns < 4; ns++) {
            int s1 = PRED[ns][0][0], p1 = PRED[ns][0][1], s2 = PRED[ns][1][0], p2 = PRED[ns][1][1];
            double c1 = cost[s1] + cb[s1 >= 2][p1], c2 = cost[s2] + cb[s2 >= 2][p2];
            if (c2 < c1) {
                next[ns] = c2;
                bk[4 * j + ns] = kb[s2 >= 2][p2];
                bs[4 * j + ns] = (int8_t)s2;
            } else {
                next[ns] = c1;
                bk[4 * j + ns] = kb[s1 >= 2][p1];
                bs[4 * j + ns] = (int8_t)s1;
            }
        }
        for (int s = 0; s < 4; s++) cost[s] = next[s];
    }
    int s = 0;
    for (int i = 1; i < 4; i++)
        if (cost[i] < cost[s]) s = i;
    for (Py_ssize_t j = m - 1; j >= 0; j--) {
        out[j] = bk[4 * j + s];
        s = bs[4 * j + s];
    }
}

static PyObject *viterbi(PyObject *self, PyObject *args) {
    Py_buffer y, table, out;
    Py_ssize_t chain;
    double lam;
    long long lo;
    if (!PyArg_ParseTuple(args, "y*ndy*Lw*", &y, &chain, &lam, &table, &lo, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = y.len / 8, t = table.len / 8;
    if (y.len % 8 || table.len % 8 || out.len != n * 8 || chain < 1) {
        PyErr_SetString(PyExc_ValueError, "trellis kernel: y f64[n], table f64[T] and out i64[n], chain >= 1");
        goto done;
    }
    Py_ssize_t scratch = chain < n ? chain : (n > 0 ? n : 1);
    int64_t *bk = malloc(sizeof(int64_t) * 4 * scratch);
    int8_t *bs = malloc(4 * scratch);
    if (!bk || !bs) {
        free(bk);
        free(bs);
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t start = 0; start < n; start += chain) {
        Py_ssize_t m = n - start < chain ? n - start : chain;
        chain_search((const double *)y.buf + start, m, lam, (const double *)table.buf, t, (int64_t)lo,
                     (int64_t *)out.buf + start, bk, bs);
    }
    Py_END_ALLOW_THREADS
    free(bk);
    free(bs);
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&y);
    PyBuffer_Release(&table);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"viterbi", viterbi, METH_VARARGS, "Viterbi search of dependent quantization's codes, chain by chain."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_trellis_native",
                                    "C kernel of dependent quantization's Viterbi search.", -1, methods};

PyMODINIT_FUNC PyInit__trellis_native(void) { return PyModule_Create(&module); }
