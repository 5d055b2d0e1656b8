/* The L7 records' way to user space in C: drain() reads the BPF ring buffer l7_events
 * (bpf/l7.h) from the agent's own mapping of it, each record's bytes one bytes object
 * in a list; decode_l7() turns such a list into (L7Event, payload) items.
 *
 * Why C: the L7 ring carries two records per HTTP request, and Python costs ~1 us per
 * record to walk a ring (datapath/ringbuf.py is the twin, used where this module is not
 * built; tests/unit/test_ringbuf.py compares the two).
 *
 * The ring as the kernel lays it out (kernel/bpf/ringbuf.c): the consumer page (its
 * first u64 consumer_pos, the only thing user space writes), then the producer page
 * (producer_pos), then the data area, a power of two mapped twice in a row so that a
 * record that runs past the end reads on contiguously. A record is an 8-byte header
 * (u32 len with BUSY bit 31 and DISCARD bit 30, u32 page offset) then len bytes,
 * padded to 8. Positions only grow; data at pos & (size - 1).
 *
 * Built by scripts/setup.sh (scripts/build_ext.py) and the agent image.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define RB_BUSY (1U << 31)
#define RB_DISCARD (1U << 30)
#define RB_HDR 8

/* drain(consumer, producer, out) -> records: consumer is a writable buffer over the
 * consumer page, producer a buffer over the producer page and the data area mapped
 * twice. Appends each committed record's bytes to out (discarded ones skipped), stops
 * at the first record still being written, then stores consumer_pos. */
static PyObject *drain(PyObject *self, PyObject *args) {
    PyObject *cons_obj, *prod_obj, *out;
    if (!PyArg_ParseTuple(args, "OOO!", &cons_obj, &prod_obj, &PyList_Type, &out)) return NULL;
    Py_buffer cv, pv;
    if (PyObject_GetBuffer(cons_obj, &cv, PyBUF_WRITABLE) < 0) return NULL;
    if (PyObject_GetBuffer(prod_obj, &pv, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&cv);
        return NULL;
    }
    long page = sysconf(_SC_PAGESIZE);
    uint64_t size = pv.len > page ? (uint64_t)(pv.len - page) / 2 : 0;
    if (cv.len < 8 || size == 0 || (size & (size - 1)) != 0 ||
        (uint64_t)pv.len != (uint64_t)page + 2 * size) {
        PyBuffer_Release(&cv);
        PyBuffer_Release(&pv);
        PyErr_SetString(PyExc_ValueError, "not a BPF ring buffer mapping");
        return NULL;
    }
    uint64_t *consumer_pos = cv.buf;
    const uint64_t *producer_pos = pv.buf;
    const unsigned char *data = (const unsigned char *)pv.buf + page;
    uint64_t cons = *consumer_pos; /* only this thread writes it */
    /* acquire: the records up to producer_pos are reserved before we read them */
    uint64_t prod = __atomic_load_n(producer_pos, __ATOMIC_ACQUIRE);
    Py_ssize_t n = 0;
    int failed = 0;
    while (cons < prod) {
        const unsigned char *hdr = data + (cons & (size - 1));
        /* acquire: a committed record's bytes are written before its BUSY bit clears */
        uint32_t len = __atomic_load_n((const uint32_t *)hdr, __ATOMIC_ACQUIRE);
        if (len & RB_BUSY) break; /* reserved, not yet committed: the next drain */
        uint32_t size_rec = len & ~(RB_BUSY | RB_DISCARD);
        if (size_rec > size - RB_HDR) { /* not a record: a broken mapping */
            PyErr_SetString(PyExc_ValueError, "BPF ring buffer record longer than the ring");
            failed = 1;
            break;
        }
        if (!(len & RB_DISCARD)) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)hdr + RB_HDR, size_rec);
            if (b == NULL || PyList_Append(out, b) < 0) failed = 1;
            Py_XDECREF(b);
            if (failed) break;
            n++;
        }
        cons += ((uint64_t)size_rec + RB_HDR + 7) & ~(uint64_t)7;
    }
    /* release: our reads of the records are done before the kernel may reuse them */
    __atomic_store_n(consumer_pos, cons, __ATOMIC_RELEASE);
    PyBuffer_Release(&cv);
    PyBuffer_Release(&pv);
    if (failed) return NULL;
    return PyLong_FromSsize_t(n);
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
        /* ints and bytes only: no cycle can pass through them (see _httpscan.c's
         * untracked), so the collector need not traverse them even once */
        PyObject_GC_UnTrack(ev);
        PyObject *item = payload ? PyTuple_Pack(2, ev, payload) : NULL;
        if (item != NULL) PyObject_GC_UnTrack(item);
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
     "drain(consumer: writable buffer, producer: buffer, out: list) -> records: appends "
     "each committed record's bytes to out, moves consumer_pos"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ringbuf", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ringbuf(void) { return PyModule_Create(&module); }
