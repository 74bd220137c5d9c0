/* The bump allocator requests are decoded into (struct arena, server.h):
 * protobuf-c takes it as its allocator, and everything a request's decode
 * allocated is dropped at once when the request is done. */
#include "server/server.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

struct arena_big {
	struct arena_big *next;
	max_align_t data[];
};

static void *arena_alloc(void *opaque, size_t size)
{
	struct arena *a = opaque;
	size = (size + 15) & ~(size_t)15;
	if (size <= a->cap - a->used) {
		void *p = a->buf + a->used;
		a->used += size;
		return p;
	}
	struct arena_big *b = malloc(sizeof(*b) + size);
	if (!b)
		return NULL;
	b->next = a->big;
	a->big = b;
	return b->data;
}

static void arena_free(void *opaque, void *p)
{
	/* everything goes at arena_reset */
}

void arena_reset(struct arena *a)
{
	a->used = 0;
	while (a->big) {
		struct arena_big *b = a->big;
		a->big = b->next;
		free(b);
	}
}

int arena_init(struct arena *a, size_t cap)
{
	a->buf = malloc(cap);
	a->cap = a->buf ? cap : 0;
	a->used = 0;
	a->big = NULL;
	return a->buf ? 0 : -ENOMEM;
}

void arena_fini(struct arena *a)
{
	arena_reset(a);
	free(a->buf);
	a->buf = NULL;
	a->cap = 0;
}

ProtobufCAllocator arena_allocator(struct arena *a)
{
	return (ProtobufCAllocator){ .alloc = arena_alloc, .free = arena_free, .allocator_data = a };
}
