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
