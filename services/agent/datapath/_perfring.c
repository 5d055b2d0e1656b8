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

static PyMethodDef methods[] = {
    {"drain", drain, METH_VARARGS,
     "drain(ring: writable buffer, out: list) -> lost: appends each sample's raw bytes "
     "to out, returns the lost-record count, moves data_tail"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_perfring", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__perfring(void) { return PyModule_Create(&module); }
