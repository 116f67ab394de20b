/* Answer entries placed in C: the per-key step of a batch read's answer.
 *
 * When every owner asked for a group of keys answered the same (read_groups.py), each key
 * is answered with its entry from the first owner's reply: a slice of that reply's
 * entries, put at the key's place in the answer. In Python that loop cost about 0.2 us a
 * key alone (twice that in a busy router), a fifth of what the router did per key read;
 * here it is one bytes object made per key and nothing else.
 *
 * place(outcomes, members, entries, starts, ends, first): for each j,
 * outcomes[members[j]] = entries[starts[first + j]:ends[first + j]], where members are
 * ints, entries bytes, and starts and ends arrays of uint32 (array('I')). Every index and
 * bound is checked: a member that is not an int or lies outside outcomes, positions past
 * starts or ends, an entry's span reversed or past entries, each raises naming it (the
 * places before it are already filled).
 *
 * same(a, a_start, b, b_start, count): whether the count items of a from a_start and of b
 * from b_start are the same bytes, for two buffers of one item size (arrays of versions
 * or writers, entries' bytes), compared in place: how read_groups.agreed tells that every
 * owner of a group answered alike without slicing each owner's columns (six copies a
 * group). Spans that do not lie within the buffers raise IndexError.
 *
 * highest(versions, start, count): the largest of count uint64 ('Q') from start, 0 for none:
 * the newest version a group of keys read (read_groups.newest_read), without an int object
 * made per key (versions are hybrid-clock stamps, far above the ints Python keeps made).
 *
 * ascending(bounds): whether an array of uint32 ('I') never goes down from one item to the
 * next: how replica_answers.split checks that a node's entries lie side by side before
 * anything slices them (in Python, about 4 us a reply of 100 keys; here a loop over
 * the buffer).
 *
 * read_groups.py and replica_answers.py keep the Python versions, which run where SHARDKV_NO_EXTENSIONS is set;
 * on what a batch read passes them (replica_answers.split checks a node's reply), the unit
 * tests check the two give the same results. On other inputs the Python ones act as
 * Python slices and comparisons do (they do not raise).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int uint32_buffer(PyObject *source, Py_buffer *view, const char *name) {
    if (PyObject_GetBuffer(source, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->itemsize != 4 || view->format == NULL || strcmp(view->format, "I") != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be an array of uint32 ('I'), not format '%s'",
                     name, view->format == NULL ? "B" : view->format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *place(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *outcomes, *members_arg, *starts_arg, *ends_arg;
    Py_buffer entries, starts = {0}, ends = {0};
    Py_ssize_t first;
    if (!PyArg_ParseTuple(args, "O!Oy*OOn:place", &PyList_Type, &outcomes, &members_arg,
                          &entries, &starts_arg, &ends_arg, &first)) {
        return NULL;
    }
    PyObject *result = NULL, *members = NULL;
    if (uint32_buffer(starts_arg, &starts, "starts") < 0) goto done;
    if (uint32_buffer(ends_arg, &ends, "ends") < 0) goto done;
    /* A snapshot: freeing an entry replaced in outcomes may run Python code. */
    members = PySequence_Tuple(members_arg);
    if (members == NULL) goto done;
    Py_ssize_t count = PyTuple_GET_SIZE(members);
    Py_ssize_t positions = starts.len / 4 < ends.len / 4 ? starts.len / 4 : ends.len / 4;
    if (first < 0 || first > positions || count > positions - first) {
        PyErr_Format(PyExc_IndexError,
                     "%zd positions from %zd are outside the %zd starts and ends answered",
                     count, first, positions);
        goto done;
    }
    const uint32_t *start_at = starts.buf, *end_at = ends.buf;
    const char *bytes = entries.buf;
    for (Py_ssize_t j = 0; j < count; j++) {
        PyObject *member = PyTuple_GET_ITEM(members, j);
        if (!PyLong_CheckExact(member)) {
            PyErr_Format(PyExc_TypeError, "member %zd is %.100s, not int", j,
                         Py_TYPE(member)->tp_name);
            goto done;
        }
        Py_ssize_t index = PyLong_AsSsize_t(member);
        if (index == -1 && PyErr_Occurred()) goto done;
        if (index < 0 || index >= PyList_GET_SIZE(outcomes)) {
            PyErr_Format(PyExc_IndexError, "member %zd is %zd, outside the %zd outcomes", j,
                         index, PyList_GET_SIZE(outcomes));
            goto done;
        }
        uint32_t start = start_at[first + j], end = end_at[first + j];
        if (start > end || (Py_ssize_t)end > entries.len) {
            PyErr_Format(PyExc_ValueError,
                         "entry at position %zd spans [%u, %u) of %zd bytes of entries",
                         first + j, start, end, entries.len);
            goto done;
        }
        PyObject *entry = PyBytes_FromStringAndSize(bytes + start, end - start);
        if (entry == NULL) goto done;
        if (PyList_SetItem(outcomes, index, entry) < 0) goto done; /* steals entry */
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(members);
    if (ends.obj != NULL) PyBuffer_Release(&ends);
    if (starts.obj != NULL) PyBuffer_Release(&starts);
    PyBuffer_Release(&entries);
    return result;
}

static PyObject *same(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer a, b;
    Py_ssize_t a_start, b_start, count;
    if (!PyArg_ParseTuple(args, "y*ny*nn:same", &a, &a_start, &b, &b_start, &count)) return NULL;
    PyObject *result = NULL;
    if (a.itemsize < 1 || b.itemsize < 1) {
        PyErr_Format(PyExc_TypeError, "items of %zd and %zd bytes cannot be compared",
                     a.itemsize, b.itemsize);
        goto done;
    }
    Py_ssize_t a_items = a.len / a.itemsize, b_items = b.len / b.itemsize;
    if (a.itemsize != b.itemsize) {
        PyErr_Format(PyExc_TypeError, "items of %zd and %zd bytes cannot be compared",
                     a.itemsize, b.itemsize);
    } else if (count < 0 || a_start < 0 || b_start < 0 || a_start > a_items ||
               b_start > b_items || count > a_items - a_start || count > b_items - b_start) {
        PyErr_Format(PyExc_IndexError,
                     "%zd items from %zd and from %zd do not lie within %zd and %zd items",
                     count, a_start, b_start, a_items, b_items);
    } else {
        const char *a_at = (const char *)a.buf + a_start * a.itemsize;
        const char *b_at = (const char *)b.buf + b_start * b.itemsize;
        result = PyBool_FromLong(memcmp(a_at, b_at, (size_t)(count * a.itemsize)) == 0);
    }
done:
    PyBuffer_Release(&b);
    PyBuffer_Release(&a);
    return result;
}

static PyObject *ascending(PyObject *module, PyObject *bounds_arg) {
    (void)module;
    Py_buffer bounds;
    if (uint32_buffer(bounds_arg, &bounds, "bounds") < 0) return NULL;
    const uint32_t *at = bounds.buf;
    Py_ssize_t count = bounds.len / 4;
    int rising = 1;
    for (Py_ssize_t i = 1; i < count && rising; i++) rising = at[i - 1] <= at[i];
    PyBuffer_Release(&bounds);
    return PyBool_FromLong(rising);
}

static PyObject *highest(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *versions_arg;
    Py_ssize_t start, count;
    if (!PyArg_ParseTuple(args, "Onn:highest", &versions_arg, &start, &count)) return NULL;
    Py_buffer versions;
    if (PyObject_GetBuffer(versions_arg, &versions, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t items = versions.len / 8;
    if (versions.itemsize != 8 || versions.format == NULL || strcmp(versions.format, "Q") != 0) {
        PyErr_Format(PyExc_TypeError, "versions must be an array of uint64 ('Q'), not '%s'",
                     versions.format == NULL ? "B" : versions.format);
    } else if (start < 0 || count < 0 || start > items || count > items - start) {
        PyErr_Format(PyExc_IndexError, "%zd versions from %zd do not lie within %zd", count,
                     start, items);
    } else {
        const uint64_t *at = (const uint64_t *)versions.buf + start;
        uint64_t top = 0;
        for (Py_ssize_t i = 0; i < count; i++) {
            if (at[i] > top) top = at[i];
        }
        result = PyLong_FromUnsignedLongLong(top);
    }
    PyBuffer_Release(&versions);
    return result;
}

static PyMethodDef methods[] = {
    {"place", place, METH_VARARGS,
     "place(outcomes, members, entries, starts, ends, first): outcomes[members[j]] ="
     " entries[starts[first + j]:ends[first + j]] for each j."},
    {"same", same, METH_VARARGS,
     "same(a, a_start, b, b_start, count) -> a[a_start:a_start + count] =="
     " b[b_start:b_start + count], for buffers of one item size."},
    {"highest", highest, METH_VARARGS,
     "highest(versions, start, count) -> the largest uint64 of the span, 0 for none."},
    {"ascending", ascending, METH_O,
     "ascending(bounds) -> whether the uint32 array bounds never goes down."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_spans", "Answer entries placed in C (see _spans.c).", -1,
    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__spans(void) { return PyModule_Create(&module_def); }
