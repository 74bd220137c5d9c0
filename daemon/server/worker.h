/* worker.h — a small fixed pool of threads for backend calls that take long
 * (pinning or unpinning a large range), so they do not stall the event loop.
 *
 * A job has two halves: run() on a worker thread, done() on the loop thread.
 * The pool knows nothing about contexts or sessions: the caller decides what
 * a job may touch (sched.c and session.c hold the job's context and session so
 * that nothing else on the loop reaches them until done() has run).
 *
 * Handing back: a worker that finishes a job puts it on the finished list
 * and writes the pool's eventfd; the loop's callback runs done() for every
 * finished job, in the order they finished. worker_wait() and worker_drain()
 * do the same synchronously, for the few places that must not go on while
 * a job runs (a P2P revocation reaching a busy context, a shutdown or a
 * restart handover).
 *
 * Threads start at the first submitted job, so they are created after the
 * sandbox is in place and inherit its seccomp filter, no_new_privs and
 * reduced capabilities; they block every signal (the loop handles them).
 *
 * Locking: one mutex guards the queues and job states; nothing else is
 * locked under it and no callback runs with it held. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <sys/queue.h>

struct event_base;
struct event;

struct worker_job {
	STAILQ_ENTRY(worker_job) link;
	void (*run)(struct worker_job *j);  /* worker thread */
	void (*done)(struct worker_job *j); /* loop thread */
	int state;                           /* WORKER_* (pool mutex) */
};

struct worker_pool {
	struct event_base *base;
	unsigned n_threads;          /* configured; 0: no pool (callers run inline) */
	unsigned n_started;
	pthread_t *threads;
	pthread_mutex_t mu;
	pthread_cond_t cv_work;      /* todo not empty, or stopping */
	pthread_cond_t cv_done;      /* a job finished (worker_wait) */
	STAILQ_HEAD(, worker_job) todo;
	STAILQ_HEAD(, worker_job) finished;
	unsigned n_jobs;             /* submitted and not yet done() (loop thread) */
	bool stopping;
	bool start_failed;           /* threads could not be created: stay inline */
	int efd;                     /* eventfd: finished jobs wait */
	struct event *ev;
	bool initialised;
};

/* n threads (0: no pool). Creates the eventfd and its event; no thread yet. */
int worker_pool_init(struct worker_pool *p, struct event_base *base, unsigned n);
/* Waits for every job (done() runs for each), stops and joins the threads. */
void worker_pool_fini(struct worker_pool *p);
/* Queues j. Returns -EAGAIN when there is no pool or its threads cannot
 * start: the caller runs the work inline instead. */
int worker_submit(struct worker_pool *p, struct worker_job *j);
/* Blocks until j's run() has returned, then runs its done() now (if the
 * loop's callback has not already). j must have been submitted. */
void worker_wait(struct worker_pool *p, struct worker_job *j);
/* Blocks until every submitted job has run; runs their done(). */
void worker_drain(struct worker_pool *p);
/* CPUs this process may run on (the default number of workers). */
unsigned worker_default_threads(void);
