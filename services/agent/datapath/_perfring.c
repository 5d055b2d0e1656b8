/* Drains one CPU's perf ring (a second mapping of the ring bcc opened) in C: each
 * PERF_RECORD_SAMPLE's raw bytes become one bytes object in a list, PERF_RECORD_LOST
 * counts are summed; then data_tail moves on, as bcc's reader does after its
 * callbacks.
 *
 * Why: bcc hands every record to Python through a ctypes callback (~0.9 us per
 * record on this machine), and the L7 buffer carries two records per HTTP request.
 * The bytes are exactly what bcc's callback would have copied (ctypes.string_at of
 * the raw data and its size), so what comes after does not change.
 *
 * Built by scripts/setup.sh (scripts/build_ext.py) and the agent image; without it
 * bcc's callbacks read the ring (datapath/perf_ring.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <string.h>

/* drain(ring, out) -> lost: ring is a writable buffer over the whole mapping (the
 * control page, then the data pages). */
static PyObject *drain(PyObject *self, PyObject *args) {
    PyObject *ring, *out;
    if (!PyArg_ParseTuple(args, "OO!", &ring, &PyList_Type, &out)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(ring, &view, PyBUF_WRITABLE) < 0) return NULL;
    struct perf_event_mmap_page *meta = view.buf;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t off = meta->data_offset ? meta->data_offset : (uint64_t)page;
    uint64_t size = meta->data_size ? meta->data_size : (uint64_t)view.len - off;
    if (off + size > (uint64_t)view.len || size == 0 || (size & (size - 1)) != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "not a perf ring mapping");
        return NULL;
    }
    unsigned char *data = (unsigned char *)view.buf + off;
    uint64_t head = __atomic_load_n(&meta->data_head, __ATOMIC_ACQUIRE);
    uint64_t tail = meta->data_tail;
    unsigned long long lost = 0;
    unsigned char stack[4096];
    int failed = 0;
    while (tail < head && !failed) {
        struct perf_event_header hdr;
        uint64_t at = tail & (size - 1);
        /* a header never wraps (records are 8-aligned), but copy like a record */
        for (size_t i = 0; i < sizeof hdr; i++)
            ((unsigned char *)&hdr)[i] = data[(at + i) & (size - 1)];
        if (hdr.size < sizeof hdr || tail + hdr.size > head) break; /* not written yet */
        unsigned char *rec = data + at;
        unsigned char *heap = NULL;
        if (at + hdr.size > size) { /* wraps around the end of the ring */
            rec = hdr.size <= sizeof stack ? stack : (heap = PyMem_Malloc(hdr.size));
            if (rec == NULL) {
                PyErr_NoMemory();
                failed = 1;
                break;
            }
            uint64_t first = size - at;
            memcpy(rec, data + at, first);
            memcpy(rec + first, data, hdr.size - first);
        }
        if (hdr.type == PERF_RECORD_SAMPLE && hdr.size >= sizeof hdr + 4) {
            uint32_t raw;
            memcpy(&raw, rec + sizeof hdr, 4);
            if (raw <= hdr.size - sizeof hdr - 4) {
                PyObject *b = PyBytes_FromStringAndSize((char *)rec + sizeof hdr + 4, raw);
                if (b == NULL || PyList_Append(out, b) < 0) failed = 1;
                Py_XDECREF(b);
            }
        } else if (hdr.type == PERF_RECORD_LOST && hdr.size >= sizeof hdr + 16) {
            uint64_t n;
            memcpy(&n, rec + sizeof hdr + 8, 8); /* after the id */
            lost += n;
        }
        PyMem_Free(heap);
        if (failed) break;
        tail += hdr.size;
    }
    __atomic_store_n(&meta->data_tail, tail, __ATOMIC_RELEASE);
    PyBuffer_Release(&view);
    if (failed) return NULL;
    return PyLong_FromUnsignedLongLong(lost);
}

/* event.py's decode_l7 over a list: decode_l7(raws, L7Event) -> (items, bad), items
 * the (L7Event, payload) of each record, bad the records too short for a header
 * (where decode_l7 raises). The header is struct l7_event of bpf/l7.h,
 * L7_EVENT_STRUCT "<Q16s16sHHIIIHHBBBBBB6x". */
#define L7_HEADER 72

static uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static PyObject *decode_l7(PyObject *self, PyObject *args) {
    PyObject *raws, *type;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &raws, &PyType_Type, &type)) return NULL;
    PyTypeObject *tp = (PyTypeObject *)type;
    if (!PyType_IsSubtype(tp, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "L7Event must be a tuple type");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(raws), bad = 0;
    PyObject *items = PyList_New(0);
    if (items == NULL) return NULL;
    static const struct { int off, len; char kind; } F[16] = {
        {0, 8, 'i'},  {8, 16, 'b'}, {24, 16, 'b'}, {40, 2, 'i'}, {42, 2, 'i'}, {44, 4, 'i'},
        {48, 4, 'i'}, {52, 4, 'i'}, {56, 2, 'i'},  {58, 2, 'i'}, {60, 1, 'i'}, {61, 1, 'i'},
        {62, 1, 'i'}, {63, 1, 'i'}, {64, 1, 'i'},  {65, 1, 'i'}};
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *raw = PyList_GET_ITEM(raws, i);
        if (!PyBytes_Check(raw)) { /* the caller decodes such a batch in Python */
            PyErr_SetString(PyExc_TypeError, "a record that is not bytes");
            goto fail;
        }
        if (PyBytes_GET_SIZE(raw) < L7_HEADER) {
            bad++;
            continue;
        }
        const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(raw);
        Py_ssize_t len = PyBytes_GET_SIZE(raw);
        PyObject *ev = tp->tp_alloc(tp, 16);
        if (ev == NULL) goto fail;
        for (int f = 0; f < 16; f++) {
            PyObject *v = F[f].kind == 'b'
                              ? PyBytes_FromStringAndSize((const char *)d + F[f].off, F[f].len)
                              : PyLong_FromUnsignedLongLong(le(d + F[f].off, F[f].len));
            if (v == NULL) {
                Py_DECREF(ev);
                goto fail;
            }
            PyTuple_SET_ITEM(ev, f, v);
        }
        /* raw[72 + payload_off : 72 + cap_len], with Python's clamping */
        Py_ssize_t start = L7_HEADER + (Py_ssize_t)le(d + 56, 2);
        Py_ssize_t end = L7_HEADER + (Py_ssize_t)le(d + 58, 2);
        if (start > len) start = len;
        if (end > len) end = len;
        PyObject *payload = end > start
                                ? PyBytes_FromStringAndSize((const char *)d + start, end - start)
                                : PyBytes_FromStringAndSize(NULL, 0);
        PyObject *item = payload ? PyTuple_Pack(2, ev, payload) : NULL;
        Py_DECREF(ev);
        Py_XDECREF(payload);
        if (item == NULL) goto fail;
        int rc = PyList_Append(items, item);
        Py_DECREF(item);
        if (rc < 0) goto fail;
    }
    return Py_BuildValue("(Nn)", items, bad);
fail:
    Py_DECREF(items);
    return NULL;
}

static PyMethodDef methods[] = {
    {"decode_l7", decode_l7, METH_VARARGS,
     "decode_l7(raws: list[bytes], L7Event) -> (list of (L7Event, payload), short records)"},
    {"drain", drain, METH_VARARGS,
     "drain(ring: writable buffer, out: list) -> lost: appends each sample's raw bytes "
     "to out, returns the lost-record count, moves data_tail"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_perfring", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__perfring(void) { return PyModule_Create(&module); }
