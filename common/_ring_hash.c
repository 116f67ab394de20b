/* Ring tokens in C: the hash placement pays for every key a router routes.
 *
 * A key's ring token is the first four bytes, little-endian, of the MD5 of the key decoded
 * as latin-1 and encoded as UTF-8 (common/ring_tokens.py says why). In Python that is a
 * hash object, a digest and an unpack per key (0.3 us a key in a batch, twice that in a
 * busy router); here it is one MD5 compression for a key under 56 bytes, with no object made.
 *
 * successors(keys, points, table) is the batch lookup of router/placement/ring.py: for each
 * key, table[bisect_right(points, token)], where points is a packed array of ascending
 * uint32 tokens (native byte order) and table a tuple of one item per point and one past
 * the last. grouped(...) is
 * the same lookup with the keys gathered by item: {item: [index of each key, ascending]},
 * which is what a batch read plans its chunks from.
 *
 * ring_tokens.py keeps the pure-Python version of both, which runs where SHARDKV_NO_EXTENSIONS
 * is set (the install always builds this module); the unit tests check the two against
 * each other.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* MD5 (RFC 1321). The sines table is computed at import, as the RFC defines it. */
static uint32_t md5_sines[64];
static const uint8_t md5_shifts[64] = {
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
    5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21};

static inline uint32_t rotate_left(uint32_t x, int count) {
    return (x << count) | (x >> (32 - count));
}

static void md5_compress(uint32_t state[4], const uint8_t block[64]) {
    uint32_t words[16];
    for (int i = 0; i < 16; i++) {
        words[i] = (uint32_t)block[4 * i] | (uint32_t)block[4 * i + 1] << 8 |
                   (uint32_t)block[4 * i + 2] << 16 | (uint32_t)block[4 * i + 3] << 24;
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
#define MD5_STEP(mix, i, word)                                                           \
    do {                                                                                 \
        uint32_t next = b + rotate_left(a + (mix) + md5_sines[i] + words[word],          \
                                        md5_shifts[i]);                                  \
        a = d;                                                                           \
        d = c;                                                                           \
        c = b;                                                                           \
        b = next;                                                                        \
    } while (0)
    for (int i = 0; i < 16; i++) MD5_STEP((b & c) | (~b & d), i, i);
    for (int i = 16; i < 32; i++) MD5_STEP((d & b) | (~d & c), i, (5 * i + 1) & 15);
    for (int i = 32; i < 48; i++) MD5_STEP(b ^ c ^ d, i, (3 * i + 5) & 15);
    for (int i = 48; i < 64; i++) MD5_STEP(c ^ (b | ~d), i, (7 * i) & 15);
#undef MD5_STEP
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
}

static uint32_t ring_token(const uint8_t *key, Py_ssize_t size) {
    uint32_t state[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    uint8_t block[64];
    int used = 0;
    uint64_t length = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        /* latin-1 to UTF-8: a byte from 0x80 up becomes two. */
        uint8_t byte = key[i];
        uint8_t utf8[2] = {byte, 0};
        int count = 1;
        if (byte >= 0x80) {
            utf8[0] = (uint8_t)(0xC0 | (byte >> 6));
            utf8[1] = (uint8_t)(0x80 | (byte & 0x3F));
            count = 2;
        }
        for (int j = 0; j < count; j++) {
            block[used++] = utf8[j];
            if (used == 64) {
                md5_compress(state, block);
                used = 0;
            }
        }
        length += (uint64_t)count;
    }
    block[used++] = 0x80;
    if (used > 56) {
        memset(block + used, 0, 64 - used);
        md5_compress(state, block);
        used = 0;
    }
    memset(block + used, 0, 56 - used);
    length *= 8;
    for (int i = 0; i < 8; i++) block[56 + i] = (uint8_t)(length >> (8 * i));
    md5_compress(state, block);
    return state[0]; /* the digest's first four bytes, read little-endian */
}

static PyObject *token(PyObject *module, PyObject *key) {
    (void)module;
    if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "a key is bytes, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    uint32_t t = ring_token((const uint8_t *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
    return PyLong_FromUnsignedLong(t);
}

/* The table index of key's successor point: bisect_right(points, token). Each probe is
   copied out of the buffer, which need not be aligned for uint32_t. */
static Py_ssize_t successor(PyObject *key, const char *points, Py_ssize_t count) {
    uint32_t t = ring_token((const uint8_t *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
    Py_ssize_t low = 0, high = count;
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        uint32_t point;
        memcpy(&point, points + middle * (Py_ssize_t)sizeof(point), sizeof(point));
        if (t < point) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    return low;
}

/* Calls found(result, index, item) for each key's item of table; 0, or -1 with an error set.
   found may run Python code (a dict hashing an item), so the keys are looked up in a tuple
   of their own and the table must be a tuple: nothing it does can pull either from under
   the loop. */
typedef int (*Found)(PyObject *result, Py_ssize_t index, PyObject *item);

static PyObject *look_up(PyObject *args, const char *format, PyObject *(*make)(Py_ssize_t),
                         Found found) {
    PyObject *keys, *table, *result = NULL, *snapshot = NULL;
    Py_buffer points;
    if (!PyArg_ParseTuple(args, format, &keys, &points, &PyTuple_Type, &table)) return NULL;
    Py_ssize_t count = points.len / (Py_ssize_t)sizeof(uint32_t);
    if (points.len % (Py_ssize_t)sizeof(uint32_t) != 0) {
        PyErr_Format(PyExc_ValueError, "points are %zd bytes: not a whole number of uint32",
                     points.len);
        goto done;
    }
    if (PyTuple_GET_SIZE(table) != count + 1) {
        PyErr_Format(PyExc_ValueError,
                     "table has %zd items for %zd points: one per point and one past the last",
                     PyTuple_GET_SIZE(table), count);
        goto done;
    }
    snapshot = PySequence_Tuple(keys);
    if (snapshot == NULL) goto done;
    Py_ssize_t size = PyTuple_GET_SIZE(snapshot);
    result = make(size);
    if (result == NULL) goto done;
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *key = PyTuple_GET_ITEM(snapshot, i);
        if (!PyBytes_Check(key)) {
            PyErr_Format(PyExc_TypeError, "key %zd is %.100s, not bytes", i,
                         Py_TYPE(key)->tp_name);
            Py_CLEAR(result);
            goto done;
        }
        PyObject *item = PyTuple_GET_ITEM(table, successor(key, points.buf, count));
        if (found(result, i, item) < 0) {
            Py_CLEAR(result);
            goto done;
        }
    }
done:
    Py_XDECREF(snapshot);
    PyBuffer_Release(&points);
    return result;
}

static int set_item(PyObject *result, Py_ssize_t index, PyObject *item) {
    Py_INCREF(item);
    PyList_SET_ITEM(result, index, item);
    return 0;
}

static int add_to_group(PyObject *result, Py_ssize_t index, PyObject *item) {
    PyObject *position = PyLong_FromSsize_t(index);
    if (position == NULL) return -1;
    PyObject *members = PyDict_GetItemWithError(result, item); /* borrowed */
    int status;
    if (members != NULL) {
        status = PyList_Append(members, position);
    } else if (PyErr_Occurred()) {
        status = -1;
    } else {
        members = PyList_New(1);
        if (members == NULL) {
            Py_DECREF(position);
            return -1;
        }
        Py_INCREF(position);
        PyList_SET_ITEM(members, 0, position);
        status = PyDict_SetItem(result, item, members);
        Py_DECREF(members);
    }
    Py_DECREF(position);
    return status;
}

static PyObject *new_dict(Py_ssize_t size) {
    (void)size;
    return PyDict_New();
}

static PyObject *successors(PyObject *module, PyObject *args) {
    (void)module;
    return look_up(args, "Oy*O!:successors", PyList_New, set_item);
}

static PyObject *grouped(PyObject *module, PyObject *args) {
    (void)module;
    return look_up(args, "Oy*O!:grouped", new_dict, add_to_group);
}

static PyMethodDef methods[] = {
    {"token", token, METH_O, "token(key) -> the key's ring token (ring_tokens.ring_token)."},
    {"successors", successors, METH_VARARGS,
     "successors(keys, points, table) -> table[bisect_right(points, token(key))] per key."},
    {"grouped", grouped, METH_VARARGS,
     "grouped(keys, points, table) -> {item: [index of each key whose item it is]}."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ring_hash", "Ring tokens in C (see _ring_hash.c).", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ring_hash(void) {
    for (int i = 0; i < 64; i++) {
        md5_sines[i] = (uint32_t)(fabs(sin((double)(i + 1))) * 4294967296.0);
    }
    return PyModule_Create(&module_def);
}
