/* The worker pool (worker.h). */
#include "server/worker.h"

#include <errno.h>
#include <event2/event.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "util/log.h"

/* The workers' nice value (relative to the loop's 0 when it runs at 0). */
#define WORKER_NICE 10

enum {
	WORKER_QUEUED = 1,
	WORKER_RUNNING,
	WORKER_FINISHED, /* run() returned; on the finished list */
	WORKER_DONE,     /* done() called (the job may be freed) */
};

static void *worker_main(void *arg)
{
	struct worker_pool *p = arg;
	/* Below the loop thread: when a worker pinning a large range and the
	 * loop share a CPU, the loop (small requests, replies) wins the CPU
	 * as soon as it wakes instead of waiting out the worker's time slice.
	 * Lowering one's own priority needs no privilege. */
	if (setpriority(PRIO_PROCESS, (id_t)gettid(), WORKER_NICE) < 0)
		log_debug("worker pool: setpriority: %m");
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (STAILQ_EMPTY(&p->todo) && !p->stopping)
			pthread_cond_wait(&p->cv_work, &p->mu);
		struct worker_job *j = STAILQ_FIRST(&p->todo);
		if (!j)
			break; /* stopping, and nothing left */
		STAILQ_REMOVE_HEAD(&p->todo, link);
		j->state = WORKER_RUNNING;
		pthread_mutex_unlock(&p->mu);

		j->run(j);

		pthread_mutex_lock(&p->mu);
		j->state = WORKER_FINISHED;
		STAILQ_INSERT_TAIL(&p->finished, j, link);
		pthread_cond_broadcast(&p->cv_done);
		uint64_t one = 1;
		/* A full counter (2^64 - 2) cannot happen: the loop reads it. */
		(void)!write(p->efd, &one, sizeof(one));
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* Runs done() for j (taken off the finished list). Loop thread, no lock. */
static void complete(struct worker_pool *p, struct worker_job *j)
{
	j->state = WORKER_DONE;
	p->n_jobs--;
	j->done(j);
}

/* Every finished job's done(), in finishing order. */
static void complete_finished(struct worker_pool *p)
{
	for (;;) {
		pthread_mutex_lock(&p->mu);
		struct worker_job *j = STAILQ_FIRST(&p->finished);
		if (j)
			STAILQ_REMOVE_HEAD(&p->finished, link);
		pthread_mutex_unlock(&p->mu);
		if (!j)
			return;
		complete(p, j);
	}
}

static void efd_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t n;
	(void)!read(fd, &n, sizeof(n));
	complete_finished(arg);
}

unsigned worker_default_threads(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) == 0) {
		int n = CPU_COUNT(&set);
		if (n > 0)
			return (unsigned)n;
	}
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (unsigned)n : 1;
}

int worker_pool_init(struct worker_pool *p, struct event_base *base, unsigned n)
{
	memset(p, 0, sizeof(*p));
	p->base = base;
	p->n_threads = n;
	p->efd = -1;
	STAILQ_INIT(&p->todo);
	STAILQ_INIT(&p->finished);
	if (n == 0)
		return 0;
	p->threads = calloc(n, sizeof(*p->threads));
	if (!p->threads)
		return -ENOMEM;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv_work, NULL);
	pthread_cond_init(&p->cv_done, NULL);
	p->initialised = true;
	p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (p->efd < 0)
		return -errno;
	p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, efd_cb, p);
	if (!p->ev)
		return -ENOMEM;
	event_add(p->ev, NULL);
	return 0;
}

/* Starts the threads with every signal blocked (they inherit the mask). */
static int start_threads(struct worker_pool *p)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = 0;
	while (p->n_started < p->n_threads) {
		r = pthread_create(&p->threads[p->n_started], NULL, worker_main, p);
		if (r != 0)
			break;
		p->n_started++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (p->n_started == 0) {
		log_warning("worker pool: cannot start a thread (%s); long backend calls run on the "
			    "event loop", strerror(r));
		p->start_failed = true;
		return -EAGAIN;
	}
	if (p->n_started < p->n_threads)
		log_warning("worker pool: started %u of %u threads (%s)", p->n_started, p->n_threads,
			    strerror(r));
	else
		log_info("worker pool: %u thread(s) started", p->n_started);
	return 0;
}

int worker_submit(struct worker_pool *p, struct worker_job *j)
{
	if (!p->initialised || p->start_failed || p->stopping)
		return -EAGAIN;
	if (p->n_started == 0 && start_threads(p) < 0)
		return -EAGAIN;
	pthread_mutex_lock(&p->mu);
	j->state = WORKER_QUEUED;
	STAILQ_INSERT_TAIL(&p->todo, j, link);
	p->n_jobs++;
	pthread_cond_signal(&p->cv_work);
	pthread_mutex_unlock(&p->mu);
	return 0;
}

void worker_wait(struct worker_pool *p, struct worker_job *j)
{
	pthread_mutex_lock(&p->mu);
	if (j->state == WORKER_DONE) {
		pthread_mutex_unlock(&p->mu);
		return;
	}
	while (j->state != WORKER_FINISHED)
		pthread_cond_wait(&p->cv_done, &p->mu);
	STAILQ_REMOVE(&p->finished, j, worker_job, link);
	pthread_mutex_unlock(&p->mu);
	complete(p, j);
}

void worker_drain(struct worker_pool *p)
{
	if (!p->initialised)
		return;
	while (p->n_jobs) {
		pthread_mutex_lock(&p->mu);
		while (STAILQ_EMPTY(&p->finished))
			pthread_cond_wait(&p->cv_done, &p->mu);
		pthread_mutex_unlock(&p->mu);
		complete_finished(p);
	}
}

void worker_pool_fini(struct worker_pool *p)
{
	if (!p->initialised)
		return;
	worker_drain(p);
	pthread_mutex_lock(&p->mu);
	p->stopping = true;
	pthread_cond_broadcast(&p->cv_work);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->n_started; i++)
		pthread_join(p->threads[i], NULL);
	if (p->ev)
		event_free(p->ev);
	if (p->efd >= 0)
		close(p->efd);
	pthread_cond_destroy(&p->cv_done);
	pthread_cond_destroy(&p->cv_work);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	p->initialised = false;
}
