/* The Viterbi search of dependent quantization (nncodec/quant/dependent.py), in C (built at install time;
 * optional: the numpy search in dependent.py stands in, with the same result, when no compiler was available).
 *
 *   viterbi(y f64[n], chain, lam f64, table f64[T], lo i64, out i64[n] (out), levels i64[n] (out),
 *           threads) -> None
 *   codes_of(levels i64[n], chain, out i64[n] (out)) -> index of the first level off its state's quantizer, or -1
 *
 * y are the values in steps; chains of ``chain`` consecutive values each start in state 0 of the 4-state
 * machine (FORMAT.md section 15). For each chain it writes the codes of the path of least
 *     sum (y - level)^2 + lam * table[clamp(k - lo, 0, T - 1)]
 * (the rate term only when lam > 0 and T > 0) and their reconstruction levels. Candidates, their order and
 * the tie-breaking are those of the numpy search (first minimum wins), so both give the same codes. Chains
 * are independent: ``threads`` (>= 1) threads search contiguous runs of them, without the GIL.
 * codes_of is dependent_stage.codes_of (the stage's encode): the codes of given levels, chain by chain.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <pthread.h>

/* predecessors of each next state, in the numpy search's order: (state, parity) ascending by state */
static const int PRED[4][2][2] = {{{0, 0}, {1, 1}}, {{2, 0}, {3, 1}}, {{0, 1}, {1, 0}}, {{2, 1}, {3, 0}}};

static inline double rate_bits(int64_t k, const double *table, Py_ssize_t t, int64_t lo) {
    int64_t i = k - lo;
    if (i < 0) i = 0;
    if (i > (int64_t)t - 1) i = (int64_t)t - 1;
    return table[i];
}

/* (int64_t)floor(v) for |v| < 2**62 (the search's range), without a libm call: truncate, then step down
 * for negative non-integers */
static inline int64_t floor_i64(double v) {
    int64_t t = (int64_t)v;
    return t - ((double)t > v);
}

static inline int64_t recon(int64_t k, int q1) {
    return q1 ? 2 * k - ((k > 0) - (k < 0)) : 2 * k;
}

/* One chain of m values: codes into out, their levels into lv. bk / bs: scratch of 4 * m entries. */
static void chain_search(const double *y, Py_ssize_t m, double lam, const double *table, Py_ssize_t t,
                         int64_t lo, int64_t *out, int64_t *lv, int64_t *bk, int8_t *bs) {
    double cost[4] = {0.0, INFINITY, INFINITY, INFINITY};
    int use_rate = lam > 0 && t > 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        double yj = y[j];
        double cb[2][2];
        int64_t kb[2][2];
        for (int q1 = 0; q1 < 2; q1++) {
            /* candidates base - 1 .. base + 2 in that order: base - 1 and base + 1 share a parity, base and
             * base + 2 the other; in each pair the first wins unless the second costs strictly less (the
             * first minimum of the candidate loop), then code 0 (rate term only) competes for parity 0 */
            int64_t base = floor_i64(q1 ? (yj + 1) / 2 : yj / 2);
            double v[4];
            for (int c = 0; c < 4; c++) {
                int64_t k = base - 1 + c;
                double d = yj - (double)recon(k, q1);
                v[c] = use_rate ? d * d + lam * rate_bits(k, table, t, lo) : d * d;
            }
            int pb = (int)(base & 1);              /* parity of base and base + 2 */
            int second_a = v[2] < v[0], second_b = v[3] < v[1];
            cb[q1][pb ^ 1] = second_a ? v[2] : v[0];
            kb[q1][pb ^ 1] = second_a ? base + 1 : base - 1;
            cb[q1][pb] = second_b ? v[3] : v[1];
            kb[q1][pb] = second_b ? base + 2 : base;
            if (use_rate) {
                double d = yj;                     /* level 0 on either quantizer */
                double v0 = d * d + lam * rate_bits(0, table, t, lo);
                if (v0 < cb[q1][0]) {
                    cb[q1][0] = v0;
                    kb[q1][0] = 0;
                }
            }
        }
        double next[4];
        for (int ns = 0; ns < 4; ns++) {
            int s1 = PRED[ns][0][0], p1 = PRED[ns][0][1], s2 = PRED[ns][1][0], p2 = PRED[ns][1][1];
            double c1 = cost[s1] + cb[s1 >= 2][p1], c2 = cost[s2] + cb[s2 >= 2][p2];
            int second = c2 < c1;
            next[ns] = second ? c2 : c1;
            bk[4 * j + ns] = second ? kb[s2 >= 2][p2] : kb[s1 >= 2][p1];
            bs[4 * j + ns] = (int8_t)(second ? s2 : s1);
        }
        for (int s = 0; s < 4; s++) cost[s] = next[s];
    }
    int s = 0;
    for (int i = 1; i < 4; i++)
        if (cost[i] < cost[s]) s = i;
    for (Py_ssize_t j = m - 1; j >= 0; j--) {
        int64_t k = bk[4 * j + s];
        s = bs[4 * j + s];
        out[j] = k;
        lv[j] = recon(k, s >= 2);
    }
}

/* A run of chains [first, last) of one search, for one thread. */
typedef struct {
    const double *y, *table;
    Py_ssize_t n, chain, t, first, last;
    double lam;
    int64_t lo, *out, *lv;
    int failed;
} job_t;

static void *run_job(void *arg) {
    job_t *job = (job_t *)arg;
    Py_ssize_t scratch = job->chain < job->n ? job->chain : (job->n > 0 ? job->n : 1);
    int64_t *bk = malloc(sizeof(int64_t) * 4 * scratch);
    int8_t *bs = malloc(4 * scratch);
    if (!bk || !bs) {
        job->failed = 1;
    } else {
        for (Py_ssize_t c = job->first; c < job->last; c++) {
            Py_ssize_t start = c * job->chain, m = job->n - start < job->chain ? job->n - start : job->chain;
            chain_search(job->y + start, m, job->lam, job->table, job->t, job->lo, job->out + start,
                         job->lv + start, bk, bs);
        }
    }
    free(bk);
    free(bs);
    return NULL;
}

#define MAX_THREADS 64

static PyObject *viterbi(PyObject *self, PyObject *args) {
    Py_buffer y, table, out, lv;
    Py_ssize_t chain, threads;
    double lam;
    long long lo;
    if (!PyArg_ParseTuple(args, "y*ndy*Lw*w*n", &y, &chain, &lam, &table, &lo, &out, &lv, &threads))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = y.len / 8, t = table.len / 8;
    if (y.len % 8 || table.len % 8 || out.len != n * 8 || lv.len != n * 8 || chain < 1 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "trellis kernel: y f64[n], table f64[T], out and levels i64[n], "
                                          "chain >= 1, threads >= 1");
        goto done;
    }
    Py_ssize_t chains = (n + chain - 1) / chain;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > chains) threads = chains > 0 ? chains : 1;
    job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (Py_ssize_t i = 0; i < threads; i++) {
        job_t j = {(const double *)y.buf, (const double *)table.buf, n, chain, t, chains * i / threads,
                   chains * (i + 1) / threads, lam, (int64_t)lo, (int64_t *)out.buf, (int64_t *)lv.buf, 0};
        jobs[i] = j;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 1; i < threads; i++)
        started[i] = pthread_create(&ids[i], NULL, run_job, &jobs[i]) == 0;
    run_job(&jobs[0]);
    for (Py_ssize_t i = 1; i < threads; i++) {
        if (started[i])
            pthread_join(ids[i], NULL);
        else
            run_job(&jobs[i]);  /* no thread to be had: this one does the run */
    }
    for (Py_ssize_t i = 0; i < threads; i++) failed |= jobs[i].failed;
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&y);
    PyBuffer_Release(&table);
    PyBuffer_Release(&out);
    PyBuffer_Release(&lv);
    return result;
}

/* NEXT_STATE of dependent_stage.py: next state after a code of parity p in state s */
static const int8_t NEXT[4][2] = {{0, 2}, {2, 0}, {1, 3}, {3, 1}};

static PyObject *codes_of(PyObject *self, PyObject *args) {
    Py_buffer lv, out;
    Py_ssize_t chain;
    if (!PyArg_ParseTuple(args, "y*nw*", &lv, &chain, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = lv.len / 8, bad = -1;
    if (lv.len % 8 || out.len != lv.len || chain < 1) {
        PyErr_SetString(PyExc_ValueError, "trellis kernel: levels i64[n], out i64[n], chain >= 1");
        goto done;
    }
    const int64_t *l = (const int64_t *)lv.buf;
    int64_t *k = (int64_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    int state = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i % chain == 0) state = 0;
        int64_t m = l[i];
        int odd = (int)(m & 1);
        if (state >= 2 ? (!odd && m != 0) : odd) {
            bad = i;
            break;
        }
        /* Q1: (m + sign(m)) // 2; Q0: m // 2 (m even: exact) */
        int64_t c = state >= 2 ? (m + ((m > 0) - (m < 0))) / 2 : m / 2;
        k[i] = c;
        state = NEXT[state][c & 1];
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(bad);
done:
    PyBuffer_Release(&lv);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"viterbi", viterbi, METH_VARARGS, "Viterbi search of dependent quantization's codes, chain by chain."},
    {"codes_of", codes_of, METH_VARARGS, "The transmitted codes of dependent quantization's levels."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_trellis_native",
                                    "C kernel of dependent quantization's Viterbi search.", -1, methods};

/* The calling convention of viterbi / codes_of: raised on every change of their arguments or results, checked
   by the Python loaders (nncodec.coding.dependent_stage.TRELLIS_ABI), which fall back to numpy on a mismatch. */
#define TRELLIS_ABI_VERSION 2

PyMODINIT_FUNC PyInit__trellis_native(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "ABI_VERSION", TRELLIS_ABI_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
