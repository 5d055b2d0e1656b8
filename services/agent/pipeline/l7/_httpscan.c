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
#include <string.h>

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

/* _header_block(data, pos): a new list of HTTPHeader and *end (after the blank line);
 * Py_None (a new reference) where the Python function answers None; NULL on error. */
static PyObject *header_block(const char *data, Py_ssize_t n, Py_ssize_t pos,
                              Py_ssize_t *end_out) {
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
    while (i < stop) {
        Py_ssize_t s = i;
        while (i < stop && is_token_char(d[i])) i++;
        if (i == s || i >= stop || d[i] != ':') Py_RETURN_NONE;
        i++;
        while (i < stop && is_text_char(d[i])) i++;
        if (stop - i < 2 || d[i] != '\r' || d[i + 1] != '\n') Py_RETURN_NONE;
        if (count == MAX_HEADERS) Py_RETURN_NONE;
        starts[count] = s;
        ends[count++] = i;
        i += 2;
    }
    PyObject *out = PyList_New(count);
    if (out == NULL) return NULL;
    for (int k = 0; k < count; k++) {
        PyObject *line = PyBytes_FromStringAndSize(data + starts[k], ends[k] - starts[k]);
        if (line == NULL) goto fail;
        PyObject *h = PyDict_GetItemWithError(LineCache, line); /* borrowed */
        if (h != NULL) {
            Py_INCREF(h);
        } else if (PyErr_Occurred()) {
            Py_DECREF(line);
            goto fail;
        } else {
            h = PyObject_CallOneArg(HeaderLine, line);
            if (h == NULL) {
                Py_DECREF(line);
                goto fail;
            }
        }
        Py_DECREF(line);
        PyList_SET_ITEM(out, k, h);
    }
    *end_out = end + 4;
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* _canonical_value(headers, canon): a new reference to the first value, Py_None, NULL */
static PyObject *canonical_value(PyObject *headers, PyObject *canon) {
    Py_ssize_t n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyObject_GetAttr(PyList_GET_ITEM(headers, i), s_key);
        if (key == NULL) return NULL;
        int eq = PyUnicode_Check(key) ? PyUnicode_Compare(key, canon) == 0
                                      : PyObject_RichCompareBool(key, canon, Py_EQ);
        Py_DECREF(key);
        if (eq < 0 || PyErr_Occurred()) return NULL;
        if (eq) return PyObject_GetAttr(PyList_GET_ITEM(headers, i), s_value);
    }
    Py_RETURN_NONE;
}

/* _body_length: 0 or more, -1 for None, -2 on error. Content-Length of plain ASCII
 * digits is read here; any other spelling goes to http.py's _body_length. */
static long long body_length(PyObject *headers, int request, int code) {
    if (!request && ((code >= 100 && code < 200) || code == 204 || code == 304)) return 0;
    PyObject *te = canonical_value(headers, s_transfer_encoding);
    if (te == NULL) return -2;
    int has_te = te != Py_None;
    Py_DECREF(te);
    if (has_te) return -1;
    PyObject *cl = canonical_value(headers, s_content_length);
    if (cl == NULL) return -2;
    if (cl == Py_None) {
        Py_DECREF(cl);
        return request ? 0 : -1;
    }
    long long v = -3;
    if (PyUnicode_Check(cl) && PyUnicode_IS_ASCII(cl)) {
        Py_ssize_t len = PyUnicode_GET_LENGTH(cl);
        const char *s = (const char *)PyUnicode_DATA(cl);
        if (len >= 1 && len <= 15) {
            v = 0;
            for (Py_ssize_t i = 0; i < len; i++) {
                if (s[i] < '0' || s[i] > '9') {
                    v = -3;
                    break;
                }
                v = v * 10 + (s[i] - '0');
            }
        }
    }
    Py_DECREF(cl);
    if (v != -3) return v;
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
    v = PyLong_AsLongLong(r);
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

static PyObject *parse_fast(PyObject *self, PyObject *args) {
    PyObject *bytes, *default_host;
    if (!PyArg_ParseTuple(args, "SO", &bytes, &default_host)) return NULL;
    if (Request == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_httpscan.configure() was not called");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(bytes);
    const unsigned char *d = (const unsigned char *)data;
    Py_ssize_t n = PyBytes_GET_SIZE(bytes);
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
        PyObject *headers = header_block(data, n, nxt, &end);
        if (headers == NULL) goto fail;
        if (headers == Py_None) {
            Py_DECREF(headers);
            goto none;
        }
        long long body = body_length(headers, request, code);
        if (body == -2) {
            Py_DECREF(headers);
            goto fail;
        }
        long long length = body >= 0 ? end - p + body : n - p;
        PyObject *htuple = PyList_AsTuple(headers);
        PyObject *msg = NULL;
        if (htuple != NULL && request) {
            PyObject *method = PyUnicode_DecodeASCII(data + p, m_end - p, NULL);
            PyObject *target = PyUnicode_DecodeASCII(data + m_end + 1, t_end - m_end - 1, NULL);
            PyObject *host = target ? canonical_value(headers, s_host) : NULL;
            PyObject *url = host ? build_url(target, d + m_end + 1, t_end - m_end - 1, host,
                                             default_host) : NULL;
            if (method && url)
                msg = PyObject_CallFunction(Request, "OOOOOOL", method, target, version,
                                            htuple, url, Py_True, length);
            Py_XDECREF(method);
            Py_XDECREF(target);
            Py_XDECREF(host);
            Py_XDECREF(url);
        } else if (htuple != NULL) {
            PyObject *reason = r_start >= 0
                                   ? PyUnicode_DecodeLatin1(data + r_start, r_end - r_start, NULL)
                                   : (Py_INCREF(s_empty), s_empty);
            if (reason)
                msg = PyObject_CallFunction(Response, "OiOOOL", version, code, reason, htuple,
                                            Py_True, length);
            Py_XDECREF(reason);
        }
        Py_XDECREF(htuple);
        Py_DECREF(headers);
        if (msg == NULL) goto fail;
        int rc = PyList_Append(messages, msg);
        Py_DECREF(msg);
        if (rc < 0) goto fail;
        pos += length;
    }
    PyObject *tuple = PyList_AsTuple(messages);
    Py_DECREF(messages);
    if (tuple == NULL) return NULL;
    PyObject *res = PyObject_CallFunctionObjArgs(Result, tuple, Py_None, NULL);
    Py_DECREF(tuple);
    return res;
none:
    Py_DECREF(messages);
    Py_RETURN_NONE;
fail:
    Py_DECREF(messages);
    return NULL;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *o[7];
    if (!PyArg_ParseTuple(args, "OOOOO!OO", &o[0], &o[1], &o[2], &o[3], &PyDict_Type, &o[4],
                          &o[5], &o[6]))
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
     "build_url, body_length): http.py's classes, cache and helpers"},
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
                {&s_code, "code"}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        *strs[i].slot = PyUnicode_InternFromString(strs[i].text);
        if (*strs[i].slot == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
