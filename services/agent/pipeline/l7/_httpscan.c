/* http.py's _parse_fast in C: complete CRLF HTTP/1.x heads (what the datapath sends,
 * nearly always) read in one pass, with the same answer as the Python function on
 * every input (tests/unit/test_l7_http.py compares them on generated payloads).
 *
 * Why C: every captured request and answer goes through this scan, and in Python it
 * was the largest part of the agent's CPU per L7 event (regex matches, find, split,
 * a dictionary lookup per header line). The objects it returns are http.py's own
 * (HTTPRequest, HTTPResponse, HTTPHeader, HTTPParseResult), built by calling their
 * classes; what is rare or has Python-specific rules is handed back to http.py's
 * functions (a header line not seen before, a URL that is not origin-form, a
 * Content-Length that is not plain ASCII digits), so there is one definition of
 * each rule.
 *
 * Built by scripts/setup.sh (and images/install.sh) with the interpreter's headers;
 * without it http.py runs its own _parse_fast.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#define MAX_MESSAGES 32
#define MAX_HEADERS 100
#define MAX_START_LINE 8192

static PyObject *Request, *Response, *Result, *HeaderLine, *LineCache, *BuildUrl,
    *BodyLength;
static PyObject *s_key, *s_value, *s_host, *s_content_length, *s_transfer_encoding,
    *s_http10, *s_http11, *s_http_prefix, *s_empty, *s_request, *s_code;

static int is_method_char(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || c == '_' || c == '-';
}

static int is_token_char(unsigned char c) {
    if (c >= '0' && c <= '9') return 1;
    if (c >= 'A' && c <= 'Z') return 1;
    if (c >= 'a' && c <= 'z') return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* [\t\x20-\x7e\x80-\xff]: a header value's or a reason phrase's bytes */
static int is_text_char(unsigned char c) {
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* "HTTP/1.0" or "HTTP/1.1" at p (8 bytes available): its interned str, else NULL */
static PyObject *version_at(const unsigned char *p) {
    if (memcmp(p, "HTTP/1.", 7) != 0) return NULL;
    if (p[7] == '0') return s_http10;
    if (p[7] == '1') return s_http11;
    return NULL;
}

/* _REQUEST_LINE.match(data, pos): fills the groups' spans, returns the end or -1 */
static Py_ssize_t request_line(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos,
                               Py_ssize_t *m_end, Py_ssize_t *t_end, PyObject **version) {
    Py_ssize_t i = pos;
    if (i >= n || d[i] < 'A' || d[i] > 'Z') return -1;
    while (i < n && is_method_char(d[i])) i++;
    if (i - pos > 32 || i >= n || d[i] != ' ') return -1;
    *m_end = i++;
    Py_ssize_t t = i;
    while (i < n && d[i] >= 0x21 && d[i] <= 0x7e) i++;
    if (i == t || i >= n || d[i] != ' ') return -1;
    *t_end = i++;
    if (n - i < 10) return -1;
    *version = version_at(d + i);
    if (*version == NULL || d[i + 8] != '\r' || d[i + 9] != '\n') return -1;
    return i + 10;
}

/* _STATUS_LINE.match(data, pos): the code, the reason's span (r_start < 0: none) */
static Py_ssize_t status_line(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos,
                              int *code, Py_ssize_t *r_start, Py_ssize_t *r_end,
                              PyObject **version) {
    if (n - pos < 14) return -1; /* "HTTP/1.1 200\r\n" */
    *version = version_at(d + pos);
    const unsigned char *c = d + pos + 9;
    if (*version == NULL || d[pos + 8] != ' ' || c[0] < '1' || c[0] > '9' ||
        c[1] < '0' || c[1] > '9' || c[2] < '0' || c[2] > '9')
        return -1;
    *code = (c[0] - '0') * 100 + (c[1] - '0') * 10 + (c[2] - '0');
    Py_ssize_t i = pos + 12;
    *r_start = -1;
    if (d[i] == ' ') {
        Py_ssize_t r = ++i;
        while (i < n && is_text_char(d[i])) i++;
        if (n - i >= 2 && d[i] == '\r' && d[i + 1] == '\n') {
            *r_start = r;
            *r_end = i;
            return i + 2;
        }
        return -1; /* and without the group the space is not "\r\n" either */
    }
    if (n - i >= 2 && d[i] == '\r' && d[i + 1] == '\n') return i + 2;
    return -1;
}

/* Untracked by the cycle collector: what this module builds (messages, their header
 * tuples, the tracker's keys, marks and queue entries) refers only to strings, numbers,
 * bytes and other such objects, never back to a container, so it can be in no cycle;
 * tracked, each would be traversed by every young collection it survives and by every
 * full one while the agent's flow ring holds it (in the bench, with the messages kept,
 * the collector took ~35 % of the tracker's time). Python untracks tuples of atomic
 * objects itself, but only after traversing them once. Untracking never frees anything
 * early: an untracked object's references just count as outside ones. */
static PyObject *untracked(PyObject *o) {
    if (o != NULL && PyObject_IS_GC(o) && PyObject_GC_IsTracked(o)) PyObject_GC_UnTrack(o);
    return o;
}

/* Header lines seen lately, in front of http.py's _HEADER_LINES: a line found here
 * needs no bytes object, no hash of it and no dictionary lookup. A line's HTTPHeader
 * depends on its bytes only (_header_line), so the one kept here equals the one
 * _HEADER_LINES or _header_line would give. Direct-mapped, LINE_SLOTS entries of lines
 * up to CACHED_LINE_MAX bytes (http.py's _HEADER_LINE_CACHED): bounded whatever arrives. */
#define LINE_SLOTS 512
#define CACHED_LINE_MAX 256
static struct {
    PyObject *line, *header; /* bytes, HTTPHeader; NULL when empty */
} lines[LINE_SLOTS];

static uint32_t line_hash(const char *p, Py_ssize_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

/* The HTTPHeader of data[s:e] (a well-formed line): a new reference, NULL on error */
static PyObject *header_of(const char *data, Py_ssize_t s, Py_ssize_t e) {
    Py_ssize_t n = e - s;
    uint32_t slot = 0;
    if (n <= CACHED_LINE_MAX) {
        slot = line_hash(data + s, n) % LINE_SLOTS;
        PyObject *l = lines[slot].line;
        if (l != NULL && PyBytes_GET_SIZE(l) == n && memcmp(PyBytes_AS_STRING(l), data + s, n) == 0) {
            Py_INCREF(lines[slot].header);
            return lines[slot].header;
        }
    }
    PyObject *line = PyBytes_FromStringAndSize(data + s, n);
    if (line == NULL) return NULL;
    PyObject *h = PyDict_GetItemWithError(LineCache, line); /* borrowed */
    if (h != NULL) {
        Py_INCREF(h);
    } else if (PyErr_Occurred() || (h = PyObject_CallOneArg(HeaderLine, line)) == NULL) {
        Py_DECREF(line);
        return NULL;
    }
    if (n <= CACHED_LINE_MAX) {
        Py_INCREF(h);
        Py_XSETREF(lines[slot].header, h);
        Py_XSETREF(lines[slot].line, line); /* the slot takes our reference */
    } else {
        Py_DECREF(line);
    }
    return h;
}

/* Whether the token data[s:e] is `name` (lower case) in any case: for a token, that is
 * whether Go's canonical spelling of it (canonical_header_key) is name's. */
static int name_is(const char *data, Py_ssize_t s, Py_ssize_t e, const char *name) {
    Py_ssize_t n = (Py_ssize_t)strlen(name);
    return e - s == n && strncasecmp(data + s, name, n) == 0;
}

/* What the scanner reads from a head's header lines itself: the first Host and
 * Content-Length lines (-1: none; the value's span, blanks stripped, for the latter),
 * whether a Transfer-Encoding line is there. */
typedef struct {
    int host, cl, te;
    Py_ssize_t cl_start, cl_end;
} Known;

/* _header_block(data, pos): a new tuple of HTTPHeader (the list _header_block gives, as
 * the message holds it) and *end (after the blank line);
 * Py_None (a new reference) where the Python function answers None; NULL on error. */
static PyObject *header_block(const char *data, Py_ssize_t n, Py_ssize_t pos,
                              Py_ssize_t *end_out, Known *known) {
    const unsigned char *d = (const unsigned char *)data;
    /* data.find(b"\r\n\r\n", pos - 2) */
    Py_ssize_t end = -1;
    for (Py_ssize_t i = pos - 2; i + 4 <= n; i++) {
        const char *p = memchr(data + i, '\r', n - i);
        if (p == NULL) break;
        i = p - data;
        if (i + 4 <= n && memcmp(data + i, "\r\n\r\n", 4) == 0) {
            end = i;
            break;
        }
    }
    if (end < pos - 2 || end + 2 - pos > MAX_START_LINE) Py_RETURN_NONE;
    /* the block data[pos:end+2]: lines token ":" text CRLF, at most MAX_HEADERS */
    Py_ssize_t starts[MAX_HEADERS + 1], ends[MAX_HEADERS + 1];
    int count = 0;
    Py_ssize_t i = pos, stop = end + 2;
    known->host = known->cl = -1;
    known->te = 0;
    while (i < stop) {
        Py_ssize_t s = i;
        while (i < stop && is_token_char(d[i])) i++;
        if (i == s || i >= stop || d[i] != ':') Py_RETURN_NONE;
        Py_ssize_t colon = i++;
        while (i < stop && is_text_char(d[i])) i++;
        if (stop - i < 2 || d[i] != '\r' || d[i + 1] != '\n') Py_RETURN_NONE;
        if (count == MAX_HEADERS) Py_RETURN_NONE;
        if (known->host < 0 && name_is(data, s, colon, "host")) {
            known->host = count;
        } else if (known->cl < 0 && name_is(data, s, colon, "content-length")) {
            Py_ssize_t vs = colon + 1, ve = i;
            while (vs < ve && (d[vs] == ' ' || d[vs] == '\t')) vs++;
            while (ve > vs && (d[ve - 1] == ' ' || d[ve - 1] == '\t')) ve--;
            known->cl = count;
            known->cl_start = vs;
            known->cl_end = ve;
        } else if (!known->te && name_is(data, s, colon, "transfer-encoding")) {
            known->te = 1;
        }
        starts[count] = s;
        ends[count++] = i;
        i += 2;
    }
    PyObject *out = untracked(PyTuple_New(count));
    if (out == NULL) return NULL;
    for (int k = 0; k < count; k++) {
        PyObject *h = header_of(data, starts[k], ends[k]);
        if (h == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, k, h);
    }
    *end_out = end + 4;
    return out;
}

/* _body_length: 0 or more, -1 for None, -2 on error. A Content-Length of plain ASCII
 * digits is read here; any other spelling goes to http.py's _body_length. */
static long long body_length(const char *data, PyObject *headers, const Known *known,
                             int request, int code) {
    if (!request && ((code >= 100 && code < 200) || code == 204 || code == 304)) return 0;
    if (known->te) return -1;
    if (known->cl < 0) return request ? 0 : -1;
    Py_ssize_t len = known->cl_end - known->cl_start;
    if (len >= 1 && len <= 15) {
        long long v = 0;
        for (Py_ssize_t i = known->cl_start; i < known->cl_end; i++) {
            if (data[i] < '0' || data[i] > '9') {
                v = -3;
                break;
            }
            v = v * 10 + (data[i] - '0');
        }
        if (v != -3) return v;
    }
    /* spaces, other digits, too long...: http.py's rule */
    PyObject *kw = Py_BuildValue("{sOsi}", "request", request ? Py_True : Py_False, "code",
                                 code);
    if (kw == NULL) return -2;
    PyObject *args = PyTuple_Pack(1, headers);
    if (args == NULL) {
        Py_DECREF(kw);
        return -2;
    }
    PyObject *r = PyObject_Call(BodyLength, args, kw);
    Py_DECREF(args);
    Py_DECREF(kw);
    if (r == NULL) return -2;
    if (r == Py_None) {
        Py_DECREF(r);
        return -1;
    }
    long long v = PyLong_AsLongLong(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred()) return -2;
    if (v < 0) { /* http.py never gives one: keep Python's arithmetic then */
        PyErr_SetString(PyExc_ValueError, "negative body length");
        return -2;
    }
    return v;
}

/* _build_url(target, host, default_host) for an origin-form target ("/..."); others
 * go to http.py's _build_url. */
static PyObject *build_url(PyObject *target, const unsigned char *t, Py_ssize_t tlen,
                           PyObject *host, PyObject *default_host) {
    if (tlen == 0 || t[0] != '/')
        return PyObject_CallFunctionObjArgs(BuildUrl, target, host, default_host, NULL);
    int truth = PyObject_IsTrue(host);
    if (truth < 0) return NULL;
    PyObject *h = truth ? host : default_host;
    if (!truth) {
        truth = PyObject_IsTrue(default_host);
        if (truth < 0) return NULL;
        if (!truth) h = s_empty;
    }
    if (!PyUnicode_Check(h)) /* f"{h}" of something else: Python's formatting */
        return PyObject_CallFunctionObjArgs(BuildUrl, target, host, default_host, NULL);
    PyObject *a = PyUnicode_Concat(s_http_prefix, h);
    if (a == NULL) return NULL;
    PyObject *url = PyUnicode_Concat(a, target);
    Py_DECREF(a);
    return url;
}

/* A dataclass(slots=True) instance built by setting its slots through their member
 * descriptors (what its generated __init__ does, without running Python code): the
 * classes here have no __post_init__ and only plain defaults (checked by layout()). */
#define MAX_FIELDS 16
typedef struct {
    PyTypeObject *tp;
    int n;
    PyObject *descr[MAX_FIELDS];
    PyObject *dflt[MAX_FIELDS]; /* NULL: no default */
} Layout;

static Layout L_req, L_resp, L_msg;

/* layout(cls, ((name, default-or-missing), ...), missing) into *l */
static int layout(Layout *l, PyObject *cls, PyObject *fields, PyObject *missing) {
    if (!PyType_Check(cls) || !PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) > MAX_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "layout: a class and at most 16 (name, default)");
        return -1;
    }
    Layout nl = {(PyTypeObject *)cls, (int)PyTuple_GET_SIZE(fields), {0}, {0}};
    for (int i = 0; i < nl.n; i++) {
        PyObject *f = PyTuple_GET_ITEM(fields, i), *name, *dflt;
        if (!PyArg_ParseTuple(f, "UO", &name, &dflt)) goto fail;
        PyObject *d = PyObject_GetAttr(cls, name);
        if (d == NULL) goto fail;
        if (!PyObject_TypeCheck(d, &PyMemberDescr_Type) || Py_TYPE(d)->tp_descr_set == NULL) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "layout: %R is not a slot", name);
            goto fail;
        }
        nl.descr[i] = d;
        nl.dflt[i] = dflt == missing ? NULL : (Py_INCREF(dflt), dflt);
    }
    Py_INCREF(cls);
    for (int i = 0; i < l->n; i++) {
        Py_XDECREF(l->descr[i]);
        Py_XDECREF(l->dflt[i]);
    }
    Py_XDECREF(l->tp);
    *l = nl;
    return 0;
fail:
    for (int i = 0; i < nl.n; i++) {
        Py_XDECREF(nl.descr[i]);
        Py_XDECREF(nl.dflt[i]);
    }
    return -1;
}

/* l->tp(*vals) with vals[i] NULL for a field's default; borrowed values */
static PyObject *build(Layout *l, PyObject *const *vals) {
    if (l->tp == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_httpscan.configure() was not called");
        return NULL;
    }
    PyObject *o = l->tp->tp_alloc(l->tp, 0);
    if (o == NULL) return NULL;
    for (int i = 0; i < l->n; i++) {
        PyObject *v = vals[i] != NULL ? vals[i] : l->dflt[i];
        if (v == NULL) {
            PyErr_SetString(PyExc_TypeError, "missing a field without default");
            goto fail;
        }
        if (Py_TYPE(l->descr[i])->tp_descr_set(l->descr[i], o, v) < 0) goto fail;
    }
    return untracked(o);
fail:
    Py_DECREF(o);
    return NULL;
}

/* What the tracker needs of each message without reading it back. */
typedef struct {
    int request, complete, code;
    long long length;
} Meta;

/* _parse_fast's messages: a new list (meta filled for each), Py_None (a new reference)
 * where _parse_fast answers None, NULL on error. */
static PyObject *fast_messages(const char *data, Py_ssize_t n, PyObject *default_host,
                               Meta *meta) {
    const unsigned char *d = (const unsigned char *)data;
    if (n == 0) Py_RETURN_NONE;
    PyObject *messages = PyList_New(0);
    if (messages == NULL) return NULL;
    long long pos = 0;
    while (pos < n && PyList_GET_SIZE(messages) < MAX_MESSAGES) {
        Py_ssize_t p = (Py_ssize_t)pos, m_end = 0, t_end = 0, r_start = -1, r_end = 0;
        PyObject *version = NULL;
        int code = 0;
        Py_ssize_t nxt = request_line(d, n, p, &m_end, &t_end, &version);
        int request = nxt >= 0;
        if (!request) {
            nxt = status_line(d, n, p, &code, &r_start, &r_end, &version);
            if (nxt < 0) goto none;
        }
        if (nxt - 1 - p > MAX_START_LINE) goto none;
        Py_ssize_t end = 0;
        Known known = {-1, -1, 0, 0, 0};
        PyObject *headers = header_block(data, n, nxt, &end, &known);
        if (headers == NULL) goto fail;
        if (headers == Py_None) {
            Py_DECREF(headers);
            goto none;
        }
        long long body = body_length(data, headers, &known, request, code);
        if (body == -2) {
            Py_DECREF(headers);
            goto fail;
        }
        long long length = body >= 0 ? end - p + body : n - p;
        PyObject *htuple = headers;
        Py_INCREF(htuple);
        PyObject *msg = NULL, *len_obj = htuple ? PyLong_FromLongLong(length) : NULL;
        if (len_obj != NULL && request) {
            PyObject *method = PyUnicode_DecodeASCII(data + p, m_end - p, NULL);
            PyObject *target = PyUnicode_DecodeASCII(data + m_end + 1, t_end - m_end - 1, NULL);
            PyObject *host = target == NULL ? NULL
                             : known.host >= 0
                                 ? PyObject_GetAttr(PyTuple_GET_ITEM(headers, known.host), s_value)
                                 : (Py_INCREF(Py_None), Py_None);
            PyObject *url = host ? build_url(target, d + m_end + 1, t_end - m_end - 1, host,
                                             default_host) : NULL;
            if (method && url) {
                PyObject *vals[] = {method, target, version, htuple, url, Py_True, len_obj};
                msg = build(&L_req, vals);
            }
            Py_XDECREF(method);
            Py_XDECREF(target);
            Py_XDECREF(host);
            Py_XDECREF(url);
        } else if (len_obj != NULL) {
            PyObject *reason = r_start >= 0
                                   ? PyUnicode_DecodeLatin1(data + r_start, r_end - r_start, NULL)
                                   : (Py_INCREF(s_empty), s_empty);
            PyObject *code_obj = reason ? PyLong_FromLong(code) : NULL;
            if (code_obj) {
                PyObject *vals[] = {version, code_obj, reason, htuple, Py_True, len_obj};
                msg = build(&L_resp, vals);
            }
            Py_XDECREF(reason);
            Py_XDECREF(code_obj);
        }
        Py_XDECREF(len_obj);
        Py_XDECREF(htuple);
        Py_DECREF(headers);
        if (msg == NULL) goto fail;
        Meta *mt = &meta[PyList_GET_SIZE(messages)];
        mt->request = request;
        mt->complete = 1;
        mt->code = code;
        mt->length = length;
        int rc = PyList_Append(messages, msg);
        Py_DECREF(msg);
        if (rc < 0) goto fail;
        pos += length;
    }
    return messages;
none:
    Py_DECREF(messages);
    Py_RETURN_NONE;
fail:
    Py_DECREF(messages);
    return NULL;
}

static PyObject *parse_fast(PyObject *self, PyObject *args) {
    PyObject *bytes, *default_host;
    if (!PyArg_ParseTuple(args, "SO", &bytes, &default_host)) return NULL;
    if (Result == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_httpscan.configure() was not called");
        return NULL;
    }
    Meta meta[MAX_MESSAGES];
    PyObject *messages = fast_messages(PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes),
                                       default_host, meta);
    if (messages == NULL || messages == Py_None) return messages;
    PyObject *tuple = PyList_AsTuple(messages);
    Py_DECREF(messages);
    if (tuple == NULL) return NULL;
    PyObject *res = PyObject_CallFunctionObjArgs(Result, tuple, Py_None, NULL);
    Py_DECREF(tuple);
    return res;
}

/* ---- tracker.py's L7Tracker._item for HTTP records, over a batch ------------------
 *
 * The state is the tracker's own Python containers (the next-message marks, the
 * HTTPPairer's queues, the counters), changed here exactly as tracker.py's _http,
 * _early_answer, _advance and pairing.py's HTTPPairer.request/response change them, so
 * either path can run any batch on the same tracker (tests/unit/test_l7_track.py runs
 * both on the same record streams and compares messages, counters and state). Records
 * of other kinds (DNS) and anything not shaped like decode_l7's output go to the
 * tracker's Python _item. */

static PyObject *ParseHttp, *DefaultHost, *Hosts, *Deque, *ODict, *Truncated;
/* deque.append, deque.popleft, OrderedDict.move_to_end: called on exact instances
 * without a method lookup each time */
static PyObject *m_append, *m_popleft, *m_move_to_end;
/* _default_host's last answer: (family, daddr, dport) -> the same string _HOSTS holds */
static PyObject *last_family, *last_daddr, *last_dport, *last_host;

static PyObject *call2(PyObject *m, PyObject *type, PyObject *name, PyObject *self,
                       PyObject *arg) {
    if (Py_TYPE(self) == (PyTypeObject *)type) {
        PyObject *args[2] = {self, arg};
        return PyObject_Vectorcall(m, args, arg != NULL ? 2 : 1, NULL);
    }
    return arg != NULL ? PyObject_CallMethodOneArg(self, name, arg)
                       : PyObject_CallMethodNoArgs(self, name);
}
#define MOVE_TO_END(od, k) call2(m_move_to_end, ODict, s_move_to_end, (od), (k))
#define POPLEFT(q) call2(m_popleft, Deque, s_popleft, (q), NULL)
#define APPEND(q, x) call2(m_append, Deque, s_append, (q), (x))
static PyObject *s_move_to_end, *s_append, *s_popleft, *s_default_host, *s_length,
    *s_headers_complete, *s_code_attr, *s_reason, *s_truncated, *s_empty_reason, *s_conns, *s_seen,
    *s_max_pending, *s_max_conns, *s_evicted, *s_unmatched;

enum { C_SKIPPED, C_TRUNCATED, C_REQUESTS, C_RESPONSES, C_UNMATCHED, C_TRUNC_PAIRS,
       C_DIRECTION, C_MARKS_EVICTED, C_ERROR, C_N };
static const char *const COUNTER_NAMES[C_N] = {
    "http_skipped_segments", "http_truncated", "http_requests", "http_responses",
    "http_unmatched_responses", "http_truncated_pairs", "http_unparsable_direction",
    "tcp_stream_marks_evicted", "error"};

typedef struct {
    PyObject *marks, *conns, *seen, *deferred, *counters, *out, *offset;
    Py_ssize_t max_streams, max_pending, max_conns;
    long long cnt[C_N], evicted, unmatched;
} Track;

/* counters[name] += by */
static int count_add(PyObject *counters, PyObject *name, long long by) {
    PyObject *old = PyDict_GetItemWithError(counters, name); /* Counter: no __missing__ here */
    if (old == NULL && PyErr_Occurred()) return -1;
    PyObject *inc = PyLong_FromLongLong(by);
    if (inc == NULL) return -1;
    PyObject *v = old != NULL ? PyNumber_Add(old, inc) : (Py_INCREF(inc), inc);
    Py_DECREF(inc);
    if (v == NULL) return -1;
    int rc = PyObject_SetItem(counters, name, v);
    Py_DECREF(v);
    return rc;
}

/* counters[f"http_unparsable_{reason}"] += 1 */
static int count_unparsable(Track *t, PyObject *reason) {
    PyObject *name = PyUnicode_FromFormat("http_unparsable_%S", reason);
    if (name == NULL) return -1;
    int rc = count_add(t->counters, name, 1);
    Py_DECREF(name);
    return rc;
}

/* (seq - mark) & 0xFFFFFFFF >= 0x80000000 for mark = got[0]: 1, 0, -1 on error */
static int before_mark(PyObject *got, PyObject *seq) {
    if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) < 1) {
        PyErr_SetString(PyExc_TypeError, "a next-message mark that is not a tuple");
        return -1;
    }
    unsigned long long s = PyLong_AsUnsignedLongLongMask(seq);
    if (s == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    unsigned long long m = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(got, 0));
    if (m == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    return ((uint32_t)(s - m)) >= 0x80000000u;
}

/* the first key of an OrderedDict (new reference), NULL with `exc` set if empty */
static PyObject *first_key(PyObject *od, PyObject *exc) {
    PyObject *it = PyObject_GetIter(od);
    if (it == NULL) return NULL;
    PyObject *k = PyIter_Next(it);
    Py_DECREF(it);
    if (k == NULL && !PyErr_Occurred()) PyErr_SetNone(exc);
    return k;
}

/* max(0, a - b) */
static PyObject *latency(PyObject *a, PyObject *b) {
    int oa = 0, ob = 0;
    long long x = PyLong_Check(a) ? PyLong_AsLongLongAndOverflow(a, &oa) : (oa = 1, 0);
    long long y = PyLong_Check(b) ? PyLong_AsLongLongAndOverflow(b, &ob) : (ob = 1, 0);
    if (PyErr_Occurred()) return NULL;
    if (!oa && !ob && x >= 0 && y >= 0) return PyLong_FromLongLong(x > y ? x - y : 0);
    PyObject *d = PyNumber_Subtract(a, b);
    if (d == NULL) return NULL;
    PyObject *zero = PyLong_FromLong(0);
    int neg = zero ? PyObject_RichCompareBool(d, zero, Py_LT) : -1;
    if (neg != 0) {
        Py_DECREF(d);
        if (neg < 0) {
            Py_XDECREF(zero);
            return NULL;
        }
        return zero;
    }
    Py_DECREF(zero);
    return d;
}

/* HTTPPairer.request(conn, req, ts) */
static int pair_request(Track *t, PyObject *conn, PyObject *req, PyObject *ts) {
    PyObject *q = PyDict_GetItemWithError(t->conns, conn);
    if (q == NULL && PyErr_Occurred()) return -1;
    if (q == NULL) {
        if (PyDict_GET_SIZE(t->conns) >= t->max_conns) { /* _evict_conn of the oldest */
            PyObject *old = first_key(t->conns, PyExc_StopIteration);
            if (old == NULL) return -1;
            PyObject *oq = PyDict_GetItemWithError(t->conns, old);
            Py_ssize_t len = oq != NULL ? PyObject_Size(oq) : 0;
            if (len < 0 || PyErr_Occurred() || PyObject_DelItem(t->conns, old) < 0 ||
                (PyDict_DelItem(t->seen, old) < 0 &&
                 (!PyErr_ExceptionMatches(PyExc_KeyError) || (PyErr_Clear(), 0)))) {
                Py_DECREF(old);
                return -1;
            }
            Py_DECREF(old);
            t->evicted += len;
        }
        PyObject *nq = PyObject_CallNoArgs(Deque);
        if (nq == NULL) return -1;
        int rc = PyObject_SetItem(t->conns, conn, nq);
        Py_DECREF(nq); /* the dict holds it */
        if (rc < 0) return -1;
        q = nq;
    } else {
        PyObject *r = MOVE_TO_END(t->conns, conn);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    Py_INCREF(q); /* a callback below may drop the dict's reference */
    Py_ssize_t len = PyObject_Size(q);
    int rc = -1;
    if (len < 0) goto out;
    if (len >= t->max_pending) {
        PyObject *r = POPLEFT(q);
        if (r == NULL) goto out;
        Py_DECREF(r);
        t->evicted++;
    }
    PyObject *item = untracked(PyTuple_Pack(2, ts, req));
    if (item == NULL) goto out;
    PyObject *r = APPEND(q, item);
    Py_DECREF(item);
    if (r == NULL) goto out;
    Py_DECREF(r);
    rc = PyDict_SetItem(t->seen, conn, ts);
out:
    Py_DECREF(q);
    return rc;
}

/* HTTPPairer.response(conn, ts, informational=...): 1 with *req and *lat (new
 * references), 0 when nothing is pending, -1 on error */
static int pair_response(Track *t, PyObject *conn, PyObject *ts, int informational,
                         PyObject **req, PyObject **lat) {
    PyObject *q = PyDict_GetItemWithError(t->conns, conn);
    if (q == NULL && PyErr_Occurred()) return -1;
    int truth = q != NULL ? PyObject_IsTrue(q) : 0;
    if (truth < 0) return -1;
    if (!truth) {
        t->unmatched++;
        return 0;
    }
    Py_INCREF(q);
    PyObject *head = informational ? PySequence_GetItem(q, 0)
                                   : POPLEFT(q);
    int rc = -1;
    if (head == NULL) goto out;
    if (!PyTuple_Check(head) || PyTuple_GET_SIZE(head) != 2) {
        PyErr_SetString(PyExc_ValueError, "a pending request that is not (ts, request)");
        goto out;
    }
    truth = PyObject_IsTrue(q);
    if (truth < 0) goto out;
    if (!truth) { /* _drop */
        if (PyObject_DelItem(t->conns, conn) < 0) goto out;
        if (PyDict_DelItem(t->seen, conn) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError)) goto out;
            PyErr_Clear();
        }
    } else if (PyDict_SetItem(t->seen, conn, ts) < 0) {
        goto out;
    }
    *lat = latency(ts, PyTuple_GET_ITEM(head, 0));
    if (*lat == NULL) goto out;
    *req = PyTuple_GET_ITEM(head, 1);
    Py_INCREF(*req);
    rc = 1;
out:
    Py_XDECREF(head);
    Py_DECREF(q);
    return rc;
}

/* _advance(ev, consumed): present says whether k has a mark (already moved to the end) */
static int advance(Track *t, PyObject *k, int present, PyObject *seq, PyObject *plen,
                   PyObject *ts, long long consumed) {
    if (!present && PyDict_GET_SIZE(t->marks) >= t->max_streams) { /* popitem(last=False) */
        PyObject *old = first_key(t->marks, PyExc_KeyError);
        if (old == NULL) return -1;
        int rc = PyObject_DelItem(t->marks, old);
        Py_DECREF(old);
        if (rc < 0) return -1;
        t->cnt[C_MARKS_EVICTED]++;
    }
    unsigned long long s = PyLong_AsUnsignedLongLongMask(seq);
    if (s == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    long long pl = PyLong_AsLongLong(plen);
    if (pl == -1 && PyErr_Occurred()) return -1;
    unsigned long long by = (unsigned long long)(consumed > pl ? consumed : pl);
    PyObject *mark = PyLong_FromUnsignedLong((unsigned long)((s + by) & 0xFFFFFFFFull));
    if (mark == NULL) return -1;
    PyObject *v = untracked(PyTuple_Pack(2, mark, ts));
    Py_DECREF(mark);
    if (v == NULL) return -1;
    int rc = PyObject_SetItem(t->marks, k, v);
    Py_DECREF(v);
    return rc;
}

/* L7Message(ev, time_ns, response, latency, http=msg, request=req) appended to out */
static int emit(Track *t, PyObject *ev, PyObject *time_ns, int response, PyObject *lat,
                PyObject *msg, PyObject *req) {
    PyObject *vals[MAX_FIELDS] = {ev, time_ns, response ? Py_True : Py_False, lat, msg, req};
    PyObject *m = build(&L_msg, vals);
    if (m == NULL) return -1;
    int rc = PyList_Append(t->out, m);
    Py_DECREF(m);
    return rc;
}

/* The messages of a parse_http result (a tuple, new reference) with their meta, and its
 * unparsable (new reference, Py_None if none). */
static PyObject *result_messages(PyObject *res, Meta *meta, PyObject **unparsable) {
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2 ||
        !PyTuple_Check(PyTuple_GET_ITEM(res, 0)) ||
        PyTuple_GET_SIZE(PyTuple_GET_ITEM(res, 0)) > MAX_MESSAGES) {
        PyErr_SetString(PyExc_TypeError, "parse_http answered something else");
        return NULL;
    }
    PyObject *msgs = PyTuple_GET_ITEM(res, 0);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(msgs); i++) {
        PyObject *m = PyTuple_GET_ITEM(msgs, i);
        Meta *mt = &meta[i];
        mt->request = PyObject_IsInstance(m, Request);
        if (mt->request < 0) return NULL;
        PyObject *a = PyObject_GetAttr(m, s_length);
        if (a == NULL) return NULL;
        mt->length = PyLong_AsLongLong(a);
        Py_DECREF(a);
        if (mt->length == -1 && PyErr_Occurred()) return NULL;
        a = PyObject_GetAttr(m, s_headers_complete);
        if (a == NULL) return NULL;
        mt->complete = PyObject_IsTrue(a);
        Py_DECREF(a);
        if (mt->complete < 0) return NULL;
        mt->code = 0;
        if (!mt->request) {
            a = PyObject_GetAttr(m, s_code_attr);
            if (a == NULL) return NULL;
            long c = PyLong_AsLong(a);
            Py_DECREF(a);
            if (c == -1 && PyErr_Occurred()) return NULL;
            mt->code = c >= 100 && c < 200 ? 100 : 200; /* only 1xx or not matters */
        }
    }
    *unparsable = PyTuple_GET_ITEM(res, 1);
    Py_INCREF(*unparsable);
    Py_INCREF(msgs);
    return msgs;
}

/* Python's early-answer check: 1 to defer the item, 0 not, -1 on error */
static int early_answer(Track *t, PyObject *payload, PyObject *got, PyObject *rev,
                        PyObject *seq) {
    if (PyBytes_GET_SIZE(payload) < 5 || memcmp(PyBytes_AS_STRING(payload), "HTTP/", 5) != 0)
        return 0;
    if (got != NULL) { /* a TCP direction's mark */
        int b = before_mark(got, seq);
        if (b != 0) return b < 0 ? -1 : 0; /* retransmission or body: not retried */
    }
    PyObject *q = PyDict_GetItemWithError(t->conns, rev);
    if (q == NULL) return PyErr_Occurred() ? -1 : 1;
    int truth = PyObject_IsTrue(q);
    return truth < 0 ? -1 : !truth;
}

/* tracker.py's _item for an HTTP record: 0, or -1 with an exception set */
static int http_item(Track *t, PyObject *item, PyObject *ev, PyObject *payload, long l7,
                     int may_defer) {
    PyObject *const *f = &PyTuple_GET_ITEM(ev, 0);
    PyObject *ts = f[0], *saddr = f[1], *daddr = f[2], *sport = f[3], *dport = f[4],
             *seq = f[6], *plen = f[7], *family = f[10];
    long proto = PyLong_AsLong(f[11]);
    if (proto == -1 && PyErr_Occurred()) return -1;
    int tcp = proto == 6, answers = (l7 & 0x10) != 0, rc = -1;
    PyObject *k = untracked(PyTuple_Pack(4, saddr, sport, daddr, dport));
    /* the request direction of an answer (a request's is k) */
    PyObject *rev = k && answers ? untracked(PyTuple_Pack(4, daddr, dport, saddr, sport)) : NULL;
    PyObject *time_ns = NULL, *host = NULL, *res = NULL, *msgs = NULL, *unparsable = NULL,
             *got = NULL;
    if (k == NULL || (answers && rev == NULL)) goto out;
    if (tcp) { /* the direction's mark, read once: nothing below changes it before use */
        got = PyDict_GetItemWithError(t->marks, k);
        if (got == NULL && PyErr_Occurred()) goto out;
        Py_XINCREF(got);
    }
    if (may_defer && answers) {
        int e = early_answer(t, payload, got, rev, seq);
        if (e < 0) goto out;
        if (e) {
            rc = PyList_Append(t->deferred, item);
            goto out;
        }
    }
    time_ns = PyNumber_Add(ts, t->offset);
    if (time_ns == NULL) goto out;
    int present = 0;
    if (got != NULL) { /* the sequence check */
        {
            present = 1;
            PyObject *r = MOVE_TO_END(t->marks, k);
            int b = r != NULL ? before_mark(got, seq) : -1;
            Py_XDECREF(r);
            if (b < 0) goto out;
            if (b) {
                t->cnt[C_SKIPPED]++;
                rc = 0;
                goto out;
            }
        }
    }
    PyObject *conn = answers ? rev : k;
    if (!answers && last_host != NULL && PyObject_RichCompareBool(family, last_family, Py_EQ) == 1 &&
        PyObject_RichCompareBool(dport, last_dport, Py_EQ) == 1 &&
        PyBytes_GET_SIZE(daddr) == PyBytes_GET_SIZE(last_daddr) &&
        memcmp(PyBytes_AS_STRING(daddr), PyBytes_AS_STRING(last_daddr),
               PyBytes_GET_SIZE(daddr)) == 0) {
        host = last_host; /* the same server as the last request's: its string again */
        Py_INCREF(host);
    } else if (!answers) { /* _default_host(family, daddr, dport) */
        PyObject *hk = PyTuple_Pack(3, family, daddr, dport);
        if (hk == NULL) goto out;
        host = PyDict_GetItemWithError(Hosts, hk);
        Py_DECREF(hk);
        if (host != NULL)
            Py_INCREF(host);
        else if (PyErr_Occurred())
            goto out;
        else if ((host = PyObject_CallFunctionObjArgs(DefaultHost, family, daddr, dport,
                                                      NULL)) == NULL)
            goto out;
        if (PyUnicode_CheckExact(host)) {
            Py_INCREF(family);
            Py_XSETREF(last_family, family);
            Py_INCREF(daddr);
            Py_XSETREF(last_daddr, daddr);
            Py_INCREF(dport);
            Py_XSETREF(last_dport, dport);
            Py_INCREF(host);
            Py_XSETREF(last_host, host);
        }
    }
    Meta meta[MAX_MESSAGES];
    PyObject *h = host ? host : Py_None;
    msgs = fast_messages(PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), h, meta);
    if (msgs == NULL) PyErr_Clear(); /* parse_http's rule: the general parser says "error" */
    if (msgs == NULL || msgs == Py_None) {
        Py_XDECREF(msgs);
        PyObject *args = PyTuple_Pack(1, payload), *kw = Py_BuildValue("{sO}", "default_host", h);
        res = args && kw ? PyObject_Call(ParseHttp, args, kw) : NULL;
        Py_XDECREF(args);
        Py_XDECREF(kw);
        msgs = res ? result_messages(res, meta, &unparsable) : NULL;
        if (msgs == NULL) goto out;
    } else {
        unparsable = Py_None;
        Py_INCREF(unparsable);
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(msgs);
    PyObject **items = PySequence_Fast_ITEMS(msgs);
    if (n == 0) {
        PyObject *reason = unparsable != Py_None ? PyObject_GetAttr(unparsable, s_reason)
                                                 : (Py_INCREF(s_empty_reason), s_empty_reason);
        if (reason == NULL) goto out;
        int e = count_unparsable(t, reason);
        Py_DECREF(reason);
        if (e < 0) goto out;
        rc = tcp ? advance(t, k, present, seq, plen, ts, 0) : 0;
        goto out;
    }
    long long consumed = 0;
    int broke = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *msg = items[i];
        Meta *mt = &meta[i];
        if (mt->request == answers) { /* not the protocol we were told */
            t->cnt[C_DIRECTION]++;
            broke = 1;
            break;
        }
        consumed += mt->length;
        if (!mt->complete) {
            t->cnt[C_TRUNCATED]++;
            if (mt->request) {
                if (pair_request(t, conn, Truncated, ts) < 0) goto out;
            } else {
                PyObject *req = NULL, *lat = NULL;
                int p = pair_response(t, conn, ts, 0, &req, &lat);
                Py_XDECREF(req);
                Py_XDECREF(lat);
                if (p < 0) goto out;
            }
            broke = 1;
            break;
        }
        if (mt->request) {
            t->cnt[C_REQUESTS]++;
            if (pair_request(t, conn, msg, ts) < 0) goto out;
            if (emit(t, ev, time_ns, 0, NULL, msg, NULL) < 0) goto out;
            continue;
        }
        PyObject *req = NULL, *lat = NULL;
        int p = pair_response(t, conn, ts, mt->code >= 100 && mt->code < 200, &req, &lat);
        if (p < 0) goto out;
        if (p == 0) {
            t->cnt[C_UNMATCHED]++;
            continue;
        }
        if (req == Truncated) {
            t->cnt[C_TRUNC_PAIRS]++;
        } else {
            t->cnt[C_RESPONSES]++;
            p = emit(t, ev, time_ns, 1, lat, msg, req);
        }
        Py_DECREF(req);
        Py_DECREF(lat);
        if (p < 0) goto out;
    }
    if (!broke && unparsable != Py_None) {
        PyObject *reason = PyObject_GetAttr(unparsable, s_reason);
        if (reason == NULL) goto out;
        int trunc = PyObject_RichCompareBool(reason, s_truncated, Py_EQ), e = 0;
        if (trunc < 0) {
            e = -1;
        } else if (trunc) {
            /* a pipelined start line cut: it holds its place in the queue */
            t->cnt[C_TRUNCATED]++;
            if (answers) {
                PyObject *req = NULL, *lat = NULL;
                e = pair_response(t, conn, ts, 0, &req, &lat) < 0 ? -1 : 0;
                Py_XDECREF(req);
                Py_XDECREF(lat);
            } else {
                e = pair_request(t, conn, Truncated, ts);
            }
        } else {
            e = count_unparsable(t, reason);
        }
        Py_DECREF(reason);
        if (e < 0) goto out;
    }
    rc = tcp ? advance(t, k, present, seq, plen, ts, consumed) : 0;
out:
    Py_XDECREF(got);
    Py_XDECREF(k);
    Py_XDECREF(rev);
    Py_XDECREF(time_ns);
    Py_XDECREF(host);
    Py_XDECREF(res);
    Py_XDECREF(msgs);
    Py_XDECREF(unparsable);
    return rc;
}

/* Whether an item is what decode_l7 gives: (L7Event, bytes) with the fields used here of
 * the types it gives; the HTTP path reads nothing else. */
static int well_formed(PyObject *item, PyObject **ev, PyObject **payload) {
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return 0;
    *ev = PyTuple_GET_ITEM(item, 0);
    *payload = PyTuple_GET_ITEM(item, 1);
    if (!PyTuple_Check(*ev) || PyTuple_GET_SIZE(*ev) != 16 || !PyBytes_CheckExact(*payload))
        return 0;
    static const int ints[] = {0, 3, 4, 6, 7, 10, 11, 13};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (!PyLong_CheckExact(PyTuple_GET_ITEM(*ev, ints[i]))) return 0;
    return PyBytes_CheckExact(PyTuple_GET_ITEM(*ev, 1)) &&
           PyBytes_CheckExact(PyTuple_GET_ITEM(*ev, 2));
}

static int flush(Track *t, PyObject *pairer) {
    int rc = 0;
    for (int i = 0; i < C_N; i++) {
        if (t->cnt[i] == 0) continue;
        PyObject *name = PyUnicode_InternFromString(COUNTER_NAMES[i]);
        if (name == NULL || count_add(t->counters, name, t->cnt[i]) < 0) rc = -1;
        Py_XDECREF(name);
        t->cnt[i] = 0;
    }
    PyObject *attrs[2] = {s_evicted, s_unmatched};
    long long by[2] = {t->evicted, t->unmatched};
    for (int i = 0; i < 2; i++) {
        if (by[i] == 0) continue;
        PyObject *old = PyObject_GetAttr(pairer, attrs[i]);
        PyObject *inc = old ? PyLong_FromLongLong(by[i]) : NULL;
        PyObject *v = inc ? PyNumber_Add(old, inc) : NULL;
        if (v == NULL || PyObject_SetAttr(pairer, attrs[i], v) < 0) rc = -1;
        Py_XDECREF(old);
        Py_XDECREF(inc);
        Py_XDECREF(v);
    }
    t->evicted = t->unmatched = 0;
    return rc;
}

static Py_ssize_t attr_size(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    Py_ssize_t n = PyNumber_AsSsize_t(v, PyExc_OverflowError);
    Py_DECREF(v);
    return n;
}

/* track(items, retried, offset_ns, max_streams, marks, pairer, deferred, counters,
 *       item, failed, out): tracker.py's loop over a sorted batch */
static PyObject *track(PyObject *self, PyObject *args) {
    PyObject *items, *retried, *pairer, *item_fn, *failed;
    Track t;
    memset(&t, 0, sizeof t);
    if (!PyArg_ParseTuple(args, "O!O!OnO!OO!O!OOO!", &PyList_Type, &items, &PySet_Type, &retried,
                          &t.offset, &t.max_streams, &PyDict_Type, &t.marks, &pairer,
                          &PyList_Type, &t.deferred, &PyDict_Type, &t.counters, &item_fn,
                          &failed, &PyList_Type, &t.out))
        return NULL;
    if (L_msg.tp == NULL || ParseHttp == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_httpscan.configure_tracker() was not called");
        return NULL;
    }
    t.conns = PyObject_GetAttr(pairer, s_conns);
    t.seen = t.conns ? PyObject_GetAttr(pairer, s_seen) : NULL;
    if (t.seen == NULL || !PyDict_Check(t.conns) || !PyDict_Check(t.seen) ||
        (t.max_pending = attr_size(pairer, s_max_pending)) < 0 ||
        (t.max_conns = attr_size(pairer, s_max_conns)) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "not an HTTPPairer");
        Py_XDECREF(t.conns);
        Py_XDECREF(t.seen);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i), *ev = NULL, *payload = NULL;
        Py_INCREF(item);
        int may_defer = 1;
        if (PySet_GET_SIZE(retried) > 0) {
            PyObject *id = PyLong_FromVoidPtr(item);
            int in = id ? PySet_Contains(retried, id) : -1;
            Py_XDECREF(id);
            may_defer = in == 0;
            if (in < 0) PyErr_Clear();
        }
        long l7 = 0;
        int py = !well_formed(item, &ev, &payload);
        if (!py) {
            l7 = PyLong_AsLong(PyTuple_GET_ITEM(ev, 13));
            if (l7 == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                py = 1; /* Python's rules */
            }
        }
        if (!py && (l7 & 0x0F) == 1) {
            if (http_item(&t, item, ev, payload, l7, may_defer) < 0) {
                /* as tracker.py: logged, counted, the batch goes on */
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                PyErr_NormalizeException(&type, &value, &tb);
                if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
                PyObject *r = PyObject_CallFunctionObjArgs(failed, ev, value ? value : Py_None,
                                                           NULL);
                if (r == NULL) PyErr_Clear();
                Py_XDECREF(r);
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
                t.cnt[C_ERROR]++;
            }
        } else if (py || (l7 & 0x0F) == 2) { /* DNS (or an odd item): tracker.py's _item */
            PyObject *r = PyObject_CallFunctionObjArgs(item_fn, item, may_defer ? Py_True
                                                                                : Py_False,
                                                       t.offset, t.out, NULL);
            if (r == NULL) {
                Py_DECREF(item);
                PyObject *type, *value, *tb; /* the counts so far still land */
                PyErr_Fetch(&type, &value, &tb);
                if (flush(&t, pairer) < 0) PyErr_Clear();
                PyErr_Restore(type, value, tb);
                Py_DECREF(t.conns);
                Py_DECREF(t.seen);
                return NULL; /* what tracker.py's loop would raise */
            }
            Py_DECREF(r);
        }
        Py_DECREF(item);
    }
    int rc = flush(&t, pairer);
    Py_DECREF(t.conns);
    Py_DECREF(t.seen);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *configure_tracker(PyObject *self, PyObject *args) {
    PyObject *msg_cls, *fields, *missing, *o[6];
    if (!PyArg_ParseTuple(args, "OO!OOOO!O!O!O", &msg_cls, &PyTuple_Type, &fields, &missing,
                          &o[0], &o[1], &PyDict_Type, &o[2], &PyType_Type, &o[3], &PyType_Type,
                          &o[4], &o[5]))
        return NULL;
    if (layout(&L_msg, msg_cls, fields, missing) < 0) return NULL;
    PyObject *m[3] = {PyObject_GetAttr(o[3], s_append), PyObject_GetAttr(o[3], s_popleft),
                      PyObject_GetAttr(o[4], s_move_to_end)};
    if (m[0] == NULL || m[1] == NULL || m[2] == NULL) {
        for (int i = 0; i < 3; i++) Py_XDECREF(m[i]);
        return NULL;
    }
    Py_XSETREF(m_append, m[0]);
    Py_XSETREF(m_popleft, m[1]);
    Py_XSETREF(m_move_to_end, m[2]);
    PyObject **slots[6] = {&ParseHttp, &DefaultHost, &Hosts, &Deque, &ODict, &Truncated};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(o[i]);
        Py_XSETREF(*slots[i], o[i]);
    }
    Py_RETURN_NONE;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *o[7], *missing, *req_fields, *resp_fields;
    if (!PyArg_ParseTuple(args, "OOOOO!OOOO!O!", &o[0], &o[1], &o[2], &o[3], &PyDict_Type, &o[4],
                          &o[5], &o[6], &missing, &PyTuple_Type, &req_fields, &PyTuple_Type,
                          &resp_fields))
        return NULL;
    if (layout(&L_req, o[0], req_fields, missing) < 0 ||
        layout(&L_resp, o[1], resp_fields, missing) < 0)
        return NULL;
    PyObject **slots[7] = {&Request, &Response, &Result, &HeaderLine, &LineCache, &BuildUrl,
                           &BodyLength};
    for (int i = 0; i < 7; i++) {
        Py_INCREF(o[i]);
        Py_XSETREF(*slots[i], o[i]);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse_fast", parse_fast, METH_VARARGS,
     "parse_fast(data: bytes, default_host) -> HTTPParseResult | None: http.py's _parse_fast"},
    {"configure", configure, METH_VARARGS,
     "configure(HTTPRequest, HTTPResponse, HTTPParseResult, header_line, line_cache, "
     "build_url, body_length, MISSING, request_fields, response_fields): http.py's classes, "
     "cache and helpers; fields: ((name, default or MISSING), ...) of a dataclass"},
    {"track", track, METH_VARARGS,
     "track(items, retried, offset_ns, max_streams, marks, pairer, deferred, counters, item, "
     "failed, out): tracker.py's loop over a sorted batch, HTTP records in C"},
    {"configure_tracker", configure_tracker, METH_VARARGS,
     "configure_tracker(L7Message, fields, MISSING, parse_http, default_host, hosts, deque, "
     "OrderedDict, truncated): tracker.py's class, helpers and placeholder"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_httpscan", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__httpscan(void) {
    struct {
        PyObject **slot;
        const char *text;
    } strs[] = {{&s_key, "key"},
                {&s_value, "value"},
                {&s_host, "Host"},
                {&s_content_length, "Content-Length"},
                {&s_transfer_encoding, "Transfer-Encoding"},
                {&s_http10, "HTTP/1.0"},
                {&s_http11, "HTTP/1.1"},
                {&s_http_prefix, "http://"},
                {&s_empty, ""},
                {&s_request, "request"},
                {&s_code, "code"},
                {&s_move_to_end, "move_to_end"},
                {&s_append, "append"},
                {&s_popleft, "popleft"},
                {&s_default_host, "default_host"},
                {&s_length, "length"},
                {&s_headers_complete, "headers_complete"},
                {&s_code_attr, "code"},
                {&s_reason, "reason"},
                {&s_truncated, "truncated"},
                {&s_empty_reason, "empty"},
                {&s_conns, "_conns"},
                {&s_seen, "_seen"},
                {&s_max_pending, "max_pending"},
                {&s_max_conns, "max_conns"},
                {&s_evicted, "evicted"},
                {&s_unmatched, "unmatched"}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        *strs[i].slot = PyUnicode_InternFromString(strs[i].text);
        if (*strs[i].slot == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
