/* The 18 logprob statistics of the feature vector, from the arrays the scanner (or decoding) gives.
 *
 * answer_stats(chosen, top, k) is their one definition: training calls it too, through
 * predictor.serving.features.answer_features, which documents each value. Why in C: in numpy
 * each of the ~25 steps costs ~1 us of call overhead on a 15-token answer, 30-60 us in all
 * against a 0.1 ms budget; here the whole vector takes a few microseconds. The constants
 * (floor, thresholds, edge width) come from Python once, through configure().
 *
 * A module of its own, apart from the scanner (_logprob_scan.c): the two share nothing, and the
 * scanner, which reads bytes another process wrote, is fuzzed and sanitised on its own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N_LOW 4 /* thresholds: "lp_frac_below_*" are out[6..9] */
#define N_STATS 18

typedef struct {
    double floor;           /* logprobs below carry no information (and keep exp/log finite) */
    double low[N_LOW];      /* thresholds for the "share below" statistics */
    Py_ssize_t edge;        /* tokens at each end summarised separately */
    double margin_low;      /* a top-1/top-2 gap below this is a near-tie */
    double top1_tolerance;  /* the chosen token counts as the top-1 within this */
    int configured;
} Constants;

static Constants K_ = {0};

/* All or nothing: a refused call leaves the previous constants in force (parsed into a copy first). */
static PyObject *stats_configure(PyObject *self, PyObject *args) {
    PyObject *low;
    Constants next = {0};
    if (!PyArg_ParseTuple(args, "dOndd:configure", &next.floor, &low, &next.edge, &next.margin_low, &next.top1_tolerance)) return NULL;
    PyObject *seq = PySequence_Fast(low, "thresholds must be a sequence of floats");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != N_LOW || next.edge < 1) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "exactly 4 thresholds and an edge of at least 1");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        next.low[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    next.configured = 1;
    K_ = next;
    Py_RETURN_NONE;
}

/* Sort ascending, stably: the order qsort gave (glibc's is a merge sort, stable, where it has the memory),
 * so every statistic keeps its bits -- the only values that compare equal yet differ are -0.0 and 0.0,
 * and lp_min is the first of them. A bottom-up merge sort inlined (qsort's comparison calls were half
 * the cost of the statistics at 128 positions): insertion sort on runs of 8, then merges through `tmp`. */
#define RUN 8
static void sort_stable(double *v, double *tmp, Py_ssize_t n) {
    for (Py_ssize_t lo = 0; lo < n; lo += RUN) {
        Py_ssize_t hi = lo + RUN < n ? lo + RUN : n;
        for (Py_ssize_t i = lo + 1; i < hi; i++) {
            double x = v[i];
            Py_ssize_t j = i;
            for (; j > lo && v[j - 1] > x; j--) v[j] = v[j - 1]; /* strictly greater: equal values keep their order */
            v[j] = x;
        }
    }
    double *src = v, *dst = tmp;
    for (Py_ssize_t width = RUN; width < n; width *= 2) {
        for (Py_ssize_t lo = 0; lo < n; lo += 2 * width) {
            Py_ssize_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            Py_ssize_t a = lo, b = mid, o = lo;
            while (a < mid && b < hi) dst[o++] = src[b] < src[a] ? src[b++] : src[a++]; /* a tie takes the left: stable */
            while (a < mid) dst[o++] = src[a++];
            while (b < hi) dst[o++] = src[b++];
        }
        double *t = src;
        src = dst;
        dst = t;
    }
    if (src != v) memcpy(v, src, (size_t)n * sizeof(double));
}

static double floored(float v) { return v > K_.floor ? (double)v : K_.floor; } /* NaN floors too */

/* np.quantile's default (linear interpolation) on sorted values. */
static double quantile(const double *sorted, Py_ssize_t n, double q) {
    double pos = q * (double)(n - 1);
    Py_ssize_t lo = (Py_ssize_t)pos, hi = lo + 1 < n ? lo + 1 : n - 1;
    return sorted[lo] + (pos - (double)lo) * (sorted[hi] - sorted[lo]);
}

static int float_buffer(PyObject *obj, Py_buffer *view, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return 0;
    /* aligned too: a float32 view at an odd byte offset (np.frombuffer(b, offset=1)) is C-contiguous,
     * and reading it as float is undefined behaviour (UBSan says so; x86 just runs it) */
    if (view->itemsize != 4 || view->format == NULL || strcmp(view->format, "f") != 0 || (uintptr_t)view->buf % _Alignof(float) != 0) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s must be an aligned C-contiguous float32 array", what);
        return 0;
    }
    return 1;
}

/* The 18 statistics of chosen (float32[m]) and top (float32[m, k], C order) into out: 1, or 0 with an
 * exception set (arrays of another type or shape, no memory). */
static int compute(PyObject *chosen_obj, PyObject *top_obj, Py_ssize_t k, double out[N_STATS]) {
    if (!K_.configured) {
        PyErr_SetString(PyExc_RuntimeError, "answer_stats needs configure() first");
        return 0;
    }
    Py_buffer cb, tb;
    if (!float_buffer(chosen_obj, &cb, "chosen")) return 0;
    if (!float_buffer(top_obj, &tb, "top")) {
        PyBuffer_Release(&cb);
        return 0;
    }
    Py_ssize_t m = cb.len / 4;
    int ok = 0;
    for (int i = 0; i < N_STATS; i++) out[i] = 0.0;
    /* tb.len / 4 == m * k, without computing m * k (a huge k overflows it: undefined behaviour) */
    Py_ssize_t n_top = tb.len / 4;
    if (k < 0 || (k == 0 ? n_top != 0 : n_top % k != 0 || n_top / k != m)) {
        PyErr_SetString(PyExc_ValueError, "top must hold k values per chosen value");
        goto done;
    }
    if (m > 0) {
        const float *lp = cb.buf, *top = tb.buf;
        double stack[512], *v = m <= 256 ? stack : PyMem_Malloc(2 * (size_t)m * sizeof(double)); /* the values, then sort_stable's room */
        if (v == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        double sum = 0.0, sq = 0.0, head = 0.0, tail = 0.0;
        Py_ssize_t edge = K_.edge < m ? K_.edge : m;
        for (Py_ssize_t i = 0; i < m; i++) {
            double x = floored(lp[i]);
            v[i] = x;
            sum += x;
            sq += x * x;
            if (i < edge) head += x;
            if (i >= m - edge) tail += x;
        }
        double mean = sum / (double)m;
        double ent_sum = 0.0, ent_max = -DBL_MAX, margin_sum = 0.0, margin_min = DBL_MAX;
        Py_ssize_t near_ties = 0, top1 = 0;
        if (k > 0) {
            for (Py_ssize_t i = 0; i < m; i++) {
                const float *row = top + i * k;
                double mass = 0.0, plogp = 0.0;
                for (Py_ssize_t j = 0; j < k; j++) {
                    double t = floored(row[j]), p = exp(t);
                    mass += p;
                    plogp += p * t;
                }
                double rest = 1.0 - mass > 1e-12 ? 1.0 - mass : 1e-12;
                double ent = -plogp - rest * log(rest);
                double first = floored(row[0]), margin = first - (k > 1 ? floored(row[1]) : K_.floor);
                ent_sum += ent;
                if (ent > ent_max) ent_max = ent;
                margin_sum += margin;
                if (margin < margin_min) margin_min = margin;
                near_ties += margin < K_.margin_low;
                top1 += v[i] >= first - K_.top1_tolerance;
            }
            out[12] = ent_sum / (double)m;
            out[13] = ent_max;
            out[14] = margin_sum / (double)m;
            out[15] = margin_min;
            out[16] = (double)near_ties / (double)m;
            out[17] = (double)top1 / (double)m;
        }
        sort_stable(v, v + m, m);
        out[0] = mean;
        out[1] = v[0];
        double var = sq / (double)m - mean * mean;
        out[2] = sqrt(var > 0.0 ? var : 0.0);
        out[3] = quantile(v, m, 0.05);
        out[4] = quantile(v, m, 0.25);
        out[5] = quantile(v, m, 0.5);
        for (int t = 0; t < N_LOW; t++) {
            Py_ssize_t below = 0;
            while (below < m && v[below] < K_.low[t]) below++;
            out[6 + t] = (double)below / (double)m;
        }
        out[10] = head / (double)edge;
        out[11] = tail / (double)edge;
        if (v != stack) PyMem_Free(v);
    }
    ok = 1;
done:
    PyBuffer_Release(&cb);
    PyBuffer_Release(&tb);
    return ok;
}

/* answer_stats(chosen: float32[m], top: float32[m, k] (C order), k) -> tuple of 18 floats:
 * lp mean, min, std, q05, q25, q50, share below each threshold, mean of the first and of the last
 * `edge` values, entropy mean and max, margin mean and min, share of near-ties, share of top-1 picks. */
static PyObject *stats_answer_stats(PyObject *self, PyObject *args) {
    PyObject *chosen_obj, *top_obj;
    Py_ssize_t k;
    double out[N_STATS];
    if (!PyArg_ParseTuple(args, "OOn:answer_stats", &chosen_obj, &top_obj, &k) || !compute(chosen_obj, top_obj, k, out)) return NULL;
    PyObject *result = PyTuple_New(N_STATS);
    if (result == NULL) return NULL;
    for (int i = 0; i < N_STATS; i++) {
        PyObject *f = PyFloat_FromDouble(out[i]);
        if (f == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyTuple_SET_ITEM(result, i, f);
    }
    return result;
}

/* answer_vector(chosen, top, k, rest: tuple of floats) -> bytearray: the whole feature vector as float32,
 * the 18 statistics then `rest`, each value rounded to float32 as np.array(..., dtype=np.float32) rounds
 * a Python float (the feature vector's bits are the same either way). Why: building that array from a
 * list of 30 Python floats took longer than computing the statistics (~15 us with numpy's code out of
 * the caches, as it is on the router's path after it has decoded a body); a bytearray keeps the
 * array over it writable. */
static PyObject *stats_answer_vector(PyObject *self, PyObject *args) {
    PyObject *chosen_obj, *top_obj, *rest;
    Py_ssize_t k;
    double out[N_STATS];
    if (!PyArg_ParseTuple(args, "OOnO!:answer_vector", &chosen_obj, &top_obj, &k, &PyTuple_Type, &rest) || !compute(chosen_obj, top_obj, k, out))
        return NULL;
    Py_ssize_t n_rest = PyTuple_GET_SIZE(rest);
    PyObject *result = PyByteArray_FromStringAndSize(NULL, (N_STATS + n_rest) * (Py_ssize_t)sizeof(float));
    if (result == NULL) return NULL;
    float *v = (float *)PyByteArray_AS_STRING(result); /* PyObject_Malloc'd: aligned */
    for (int i = 0; i < N_STATS; i++) v[i] = (float)out[i];
    for (Py_ssize_t i = 0; i < n_rest; i++) {
        double x = PyFloat_AsDouble(PyTuple_GET_ITEM(rest, i)); /* an int or a float; the vector's ints are small */
        if (x == -1.0 && PyErr_Occurred()) {
            Py_DECREF(result);
            return NULL;
        }
        v[N_STATS + i] = (float)x;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"configure", stats_configure, METH_VARARGS, "configure(floor, thresholds, edge, margin_low, top1_tolerance)"},
    {"answer_stats", stats_answer_stats, METH_VARARGS, "answer_stats(chosen, top, k) -> 18 floats"},
    {"answer_vector", stats_answer_vector, METH_VARARGS, "answer_vector(chosen, top, k, rest) -> bytearray of float32: the 18 statistics, then rest"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_answer_stats", "The feature vector's 18 logprob statistics.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__answer_stats(void) { return PyModule_Create(&module); }
