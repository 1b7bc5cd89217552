/* The common call of Run.log in C: optional, and exactly the Python short path.
 *
 * Why C: right after a training step the CPU caches are cold, and every
 * interpreter instruction the call runs costs cache misses. The Python short
 * path (a dict copy, a pass over the values' types, a step, an append) costs
 * ~9 us after a 10 ms training step against ~3 us for a bare dict(metrics);
 * this one does the same work in one C function (~4.5 us, benchmarks/peers.py).
 * Anything but the common call (a value to convert, a step to check, reduce=,
 * a run off its short path, keywords spelled through **kwargs) goes to the
 * Python implementation, which stays the reference:
 * FOUNDRY_TRACK_NO_SPEEDUPS=1 uses it for every call.
 *
 * One difference: the event's time is read from CLOCK_REALTIME directly, as
 * time.time() does, so a patched time.time (freezegun) does not apply.
 *
 * A FastLog is also the run's gate: `hot` (may the call take the short path)
 * and `last_step` live here, in C fields, because reading them from the run's
 * __dict__ costs a cold hash lookup each.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <time.h>

#ifdef Py_GIL_DISABLED
/* The step counter relies on the GIL; setup.py's build is optional, so a
   free-threaded Python gets the Python run.log. */
#error "foundry_track._speedups needs the GIL"
#endif

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int hot;
    long long last_step;
    PyObject *append; /* the journal queue's append */
    PyObject *slow;   /* the bound Python Run.log: slow(metrics, step=None, reduce=None) */
    PyObject *slow_values; /* the bound Run._log_slow(values, step, reduce): values is our copy */
    PyObject *weakrefs;
} FastLog;

static PyObject *s_kind, *s_metrics, *s_step, *s_reduce, *time_time;

#define STEP_MAX 9223372036854775807LL /* 2**63 - 1: SQLite's INTEGER */

/* time.time(), without the call: CPython reads the same clock. */
static PyObject *
wall_clock(void)
{
#if defined(CLOCK_REALTIME) && !defined(_WIN32)
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0) {
        return PyFloat_FromDouble((double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
    }
#endif
    return PyObject_CallNoArgs(time_time);
}

static PyObject *
fastlog_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FastLog *self = (FastLog *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *metrics = nargs > 0 ? args[0] : NULL;
    PyObject *step = nargs > 1 ? args[1] : Py_None;
    PyObject *reduce = nargs > 2 ? args[2] : Py_None;
    PyObject *key, *value, *copy, *step_obj, *now, *event, *result;
    Py_ssize_t pos = 0;
    long long step_value;
    int overflow;

    if (self->slow == NULL) { /* only after the collector cleared it: unreachable in practice */
        PyErr_SetString(PyExc_ReferenceError, "run.log: the run was garbage-collected");
        return NULL;
    }
    if (!self->hot || nargs > 3) {
        goto slow;
    }
    if (kwnames != NULL) {
        /* Names written at a call site are interned, so identity is enough;
           any other spelling takes the Python path, which parses it fully. */
        Py_ssize_t i, nkw = PyTuple_GET_SIZE(kwnames);
        for (i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            if (name == s_step && nargs < 2) {
                step = args[nargs + i];
            }
            else if (name == s_reduce && nargs < 3) {
                reduce = args[nargs + i];
            }
            else if (name == s_metrics && nargs < 1) {
                metrics = args[nargs + i];
            }
            else {
                goto slow;
            }
        }
    }
    if (metrics == NULL || reduce != Py_None || !PyDict_CheckExact(metrics)) {
        goto slow;
    }
    /* The copy is what gets checked and logged: allocating it may run the
       garbage collector, and with it code that changes the caller's dict. */
    copy = PyDict_Copy(metrics);
    if (copy == NULL) {
        return NULL;
    }
    /* Exact float and int only (not bool, numpy scalars or tensors): those are
       converted, and bad values reported, by the Python path. */
    while (PyDict_Next(copy, &pos, &key, &value)) {
        if (!PyFloat_CheckExact(value) && !PyLong_CheckExact(value)) {
            goto slow_copied;
        }
    }
    /* From reading the step to writing it nothing allocates a container (which
       may run the collector, and Python code that lets another thread in), so
       concurrent callers get distinct steps. */
    if (step == Py_None) {
        if (self->last_step >= STEP_MAX) {
            goto slow_copied;
        }
        step_value = self->last_step + 1;
        step_obj = PyLong_FromLongLong(step_value);
        if (step_obj == NULL) {
            Py_DECREF(copy);
            return NULL;
        }
    }
    else if (PyLong_CheckExact(step)) {
        step_value = PyLong_AsLongLongAndOverflow(step, &overflow);
        if (overflow || step_value < 0) {
            goto slow_copied;
        }
        step_obj = Py_NewRef(step);
    }
    else {
        goto slow_copied;
    }
    self->last_step = step_value;
    now = wall_clock();
    if (now == NULL) {
        Py_DECREF(copy);
        Py_DECREF(step_obj);
        return NULL;
    }
    event = PyTuple_New(4);
    if (event == NULL) {
        Py_DECREF(now);
        Py_DECREF(copy);
        Py_DECREF(step_obj);
        return NULL;
    }
    PyTuple_SET_ITEM(event, 0, Py_NewRef(s_kind));
    PyTuple_SET_ITEM(event, 1, step_obj);
    PyTuple_SET_ITEM(event, 2, now);
    PyTuple_SET_ITEM(event, 3, copy);
    result = PyObject_CallOneArg(self->append, event);
    Py_DECREF(event);
    if (result == NULL) {
        return NULL;
    }
    Py_DECREF(result);
    Py_RETURN_NONE;

slow_copied:
    /* A value to convert or a step to check: Run._log_slow takes it from
       here, with the copy already made (what Run.log would do next). */
    {
        PyObject *slow_args[3] = {copy, step, reduce};
        result = PyObject_Vectorcall(self->slow_values, slow_args, 3, NULL);
        Py_DECREF(copy);
        return result;
    }
slow:
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
}

static PyObject *
fastlog_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"append", "slow", "slow_values", "last_step", NULL};
    PyObject *append, *slow, *slow_values;
    long long last_step = -1;
    FastLog *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|L:FastLog", names, &append, &slow, &slow_values, &last_step)) {
        return NULL;
    }
    if (!PyCallable_Check(append) || !PyCallable_Check(slow) || !PyCallable_Check(slow_values)) {
        PyErr_SetString(PyExc_TypeError, "FastLog(append, slow, slow_values): all must be callable");
        return NULL;
    }
    self = (FastLog *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = fastlog_vectorcall;
    self->hot = 0;
    self->last_step = last_step;
    self->append = Py_NewRef(append);
    self->slow = Py_NewRef(slow);
    self->slow_values = Py_NewRef(slow_values);
    return (PyObject *)self;
}

static int
fastlog_traverse(FastLog *self, visitproc visit, void *arg)
{
    Py_VISIT(self->append);
    Py_VISIT(self->slow);
    Py_VISIT(self->slow_values);
    return 0;
}

static int
fastlog_clear(FastLog *self)
{
    Py_CLEAR(self->append);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->slow_values);
    return 0;
}

static void
fastlog_dealloc(FastLog *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    fastlog_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
fastlog_get_hot(FastLog *self, void *closure)
{
    return PyBool_FromLong(self->hot);
}

static int
fastlog_set_hot(FastLog *self, PyObject *value, void *closure)
{
    int truth;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete hot");
        return -1;
    }
    truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    self->hot = truth;
    return 0;
}

static PyObject *
fastlog_get_last_step(FastLog *self, void *closure)
{
    return PyLong_FromLongLong(self->last_step);
}

static int
fastlog_set_last_step(FastLog *self, PyObject *value, void *closure)
{
    long long step;
    if (value == NULL || !PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "last_step must be an int");
        return -1;
    }
    step = PyLong_AsLongLong(value);
    if (step == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (step < -1) {
        PyErr_SetString(PyExc_ValueError, "last_step must be in -1..2**63-1");
        return -1;
    }
    self->last_step = step;
    return 0;
}

/* The bound method's attributes (__doc__, __name__, __self__, ...), so that
   help(run.log), inspect.signature(run.log) and code that looks at a bound
   method see the Python one; closure is the attribute's name. */
static PyObject *
fastlog_get_forwarded(FastLog *self, void *closure)
{
    if (self->slow == NULL) {
        PyErr_SetString(PyExc_ReferenceError, "run.log: the run was garbage-collected");
        return NULL;
    }
    if (closure == NULL) {
        return Py_NewRef(self->slow);
    }
    return PyObject_GetAttrString(self->slow, (const char *)closure);
}

static PyGetSetDef fastlog_getset[] = {
    {"hot", (getter)fastlog_get_hot, (setter)fastlog_set_hot, "may the next call take the short path", NULL},
    {"last_step", (getter)fastlog_get_last_step, (setter)fastlog_set_last_step, "the step of the last call",
     NULL},
    {"__wrapped__", (getter)fastlog_get_forwarded, NULL, "the Python implementation (a bound method)", NULL},
    {"__doc__", (getter)fastlog_get_forwarded, NULL, NULL, "__doc__"},
    {"__name__", (getter)fastlog_get_forwarded, NULL, NULL, "__name__"},
    {"__qualname__", (getter)fastlog_get_forwarded, NULL, NULL, "__qualname__"},
    {"__module__", (getter)fastlog_get_forwarded, NULL, NULL, "__module__"},
    {"__self__", (getter)fastlog_get_forwarded, NULL, NULL, "__self__"},
    {"__func__", (getter)fastlog_get_forwarded, NULL, NULL, "__func__"},
    {NULL},
};

static PyTypeObject FastLogType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "foundry_track._speedups.FastLog",
    .tp_basicsize = sizeof(FastLog),
    .tp_dealloc = (destructor)fastlog_dealloc,
    .tp_vectorcall_offset = offsetof(FastLog, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_traverse = (traverseproc)fastlog_traverse,
    .tp_clear = (inquiry)fastlog_clear,
    .tp_getset = fastlog_getset,
    .tp_weaklistoffset = offsetof(FastLog, weakrefs),
    .tp_new = fastlog_new,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "foundry_track._speedups",
    .m_doc = "The common call of Run.log in C (optional; the Python path is the reference).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module, *time_module;

    if (!(s_kind = PyUnicode_InternFromString("metrics")) || !(s_metrics = PyUnicode_InternFromString("metrics"))
        || !(s_step = PyUnicode_InternFromString("step")) || !(s_reduce = PyUnicode_InternFromString("reduce"))) {
        return NULL;
    }
    time_module = PyImport_ImportModule("time");
    if (time_module == NULL) {
        return NULL;
    }
    time_time = PyObject_GetAttrString(time_module, "time");
    Py_DECREF(time_module);
    if (time_time == NULL) {
        return NULL;
    }
    if (PyType_Ready(&FastLogType) < 0) {
        return NULL;
    }
    module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&FastLogType);
    if (PyModule_AddObject(module, "FastLog", (PyObject *)&FastLogType) < 0) {
        Py_DECREF(&FastLogType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
