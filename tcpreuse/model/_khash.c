/* The model's keyed-hash primitive in C: tuple_hash(a, b, ...) == hash((a, b, ...)) and
 * hash32(a, b, ...) == hash((a, b, ...)) & 0xFFFFFFFF.
 *
 * model/khash.py is the reference (Python's own tuple hash) and says why the model hashes
 * with it; this is CPython's tuplehash() (Objects/tupleobject.c, 3.8-3.13: xxHash's
 * round over the items' hashes) applied to the arguments, without building the tuple and
 * boxing it, which cost the simulator ~1,900 instructions per server ISN. Each item's
 * hash is PyObject_Hash(), as in tuplehash(), so the result is the same for any
 * arguments; tests/test_model_khash.py checks it against hash() of the tuple.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if SIZEOF_PY_UHASH_T > 4
#define XXPRIME_1 ((Py_uhash_t)11400714785074694791ULL)
#define XXPRIME_2 ((Py_uhash_t)14029467366897019727ULL)
#define XXPRIME_5 ((Py_uhash_t)2870177450012600261ULL)
#define XXROTATE(x) ((x << 31) | (x >> 33)) /* Rotate left 31 bits */
#else
#define XXPRIME_1 ((Py_uhash_t)2654435761UL)
#define XXPRIME_2 ((Py_uhash_t)2246822519UL)
#define XXPRIME_5 ((Py_uhash_t)374761393UL)
#define XXROTATE(x) ((x << 13) | (x >> 19)) /* Rotate left 13 bits */
#endif

/* tuplehash() over args[0:nargs]; -1 with an exception set if an item is unhashable. */
static Py_hash_t
hash_items(PyObject *const *args, Py_ssize_t nargs)
{
    Py_uhash_t acc = XXPRIME_5;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_uhash_t lane = (Py_uhash_t)PyObject_Hash(args[i]);
        if (lane == (Py_uhash_t)-1) {
            return -1;
        }
        acc += lane * XXPRIME_2;
        acc = XXROTATE(acc);
        acc *= XXPRIME_1;
    }
    /* Add input length, mangled to keep the historical value of hash(()). */
    acc += (Py_uhash_t)nargs ^ (XXPRIME_5 ^ 3527539UL);
    if (acc == (Py_uhash_t)-1) {
        return 1546275796;
    }
    return (Py_hash_t)acc;
}

/* hash32(secret, a, b, p, q) for ap = (a << 16) | p and bq = (b << 16) | q with 0 <= p, q < 2**16:
 * a 4-tuple's two (address, port) pairs packed as one int each, so that compiled callers box
 * three ints for the call, not five (khash.hash32_pairs_ref is the definition). The lanes are
 * the items' hashes as in hash_items(): hash(x) == x for 0 <= x < 2**61 - 1, which holds for
 * a, b < 2**47 and p, q; any other ap or bq is split with Python's own operators. */
static PyObject *
hash32_pairs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "hash32_pairs() takes exactly 3 arguments");
        return NULL;
    }
    /* (PyLong_AsLongLongAndOverflow reads the digits; PyLong_AsUnsignedLongLong goes
     * through a byte array, several times slower) */
    int over_a = 0, over_b = 0;
    long long ap = PyLong_Check(args[1]) ? PyLong_AsLongLongAndOverflow(args[1], &over_a) : -1;
    long long bq = PyLong_Check(args[2]) ? PyLong_AsLongLongAndOverflow(args[2], &over_b) : -1;
    Py_hash_t h;
    if (ap < 0 || bq < 0 || over_a || over_b) {
        /* negative, 2**63 or more, or not an int: the definition's split, item by item */
        PyObject *shift = PyLong_FromLong(16), *mask = PyLong_FromLong(0xFFFF);
        PyObject *items[5] = {args[0], NULL, NULL, NULL, NULL};
        if (shift != NULL && mask != NULL) {
            items[1] = PyNumber_Rshift(args[1], shift);
            items[2] = items[1] ? PyNumber_Rshift(args[2], shift) : NULL;
            items[3] = items[2] ? PyNumber_And(args[1], mask) : NULL;
            items[4] = items[3] ? PyNumber_And(args[2], mask) : NULL;
        }
        h = items[4] != NULL ? hash_items(items, 5) : -1;
        for (int i = 1; i < 5; i++) {
            Py_XDECREF(items[i]);
        }
        Py_XDECREF(shift);
        Py_XDECREF(mask);
        if (h == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    else {
        Py_uhash_t lanes[5];
        Py_hash_t s = PyObject_Hash(args[0]);
        if (s == -1) {
            return NULL;
        }
        lanes[0] = (Py_uhash_t)s;
        lanes[1] = (Py_uhash_t)(ap >> 16);  /* < 2**47: its own hash */
        lanes[2] = (Py_uhash_t)(bq >> 16);
        lanes[3] = (Py_uhash_t)(ap & 0xFFFF);
        lanes[4] = (Py_uhash_t)(bq & 0xFFFF);
        Py_uhash_t acc = XXPRIME_5;
        for (int i = 0; i < 5; i++) {
            acc += lanes[i] * XXPRIME_2;
            acc = XXROTATE(acc);
            acc *= XXPRIME_1;
        }
        acc += (Py_uhash_t)5 ^ (XXPRIME_5 ^ 3527539UL);
        h = acc == (Py_uhash_t)-1 ? 1546275796 : (Py_hash_t)acc;
    }
    return PyLong_FromUnsignedLong((unsigned long)((Py_uhash_t)h & 0xFFFFFFFFUL));
}

static PyObject *
tuple_hash(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_hash_t h = hash_items(args, nargs);
    if (h == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromSsize_t(h);
}

/* hash(items) & 0xFFFFFFFF: always a small int, where the hash itself is a 64-bit one
 * that compiled code would carry as a Python object. */
static PyObject *
hash32(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_hash_t h = hash_items(args, nargs);
    if (h == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromUnsignedLong((unsigned long)((Py_uhash_t)h & 0xFFFFFFFFUL));
}

static PyMethodDef methods[] = {
    {"tuple_hash", (PyCFunction)(void (*)(void))tuple_hash, METH_FASTCALL,
     "tuple_hash(*items) -> hash(items), without building the tuple"},
    {"hash32", (PyCFunction)(void (*)(void))hash32, METH_FASTCALL,
     "hash32(*items) -> hash(items) & 0xFFFFFFFF, without building the tuple"},
    {"hash32_pairs", (PyCFunction)(void (*)(void))hash32_pairs, METH_FASTCALL,
     "hash32_pairs(secret, a << 16 | p, b << 16 | q) -> hash32(secret, a, b, p, q)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_khash", "The model's keyed-hash primitive (model/khash.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__khash(void)
{
    return PyModule_Create(&module);
}
