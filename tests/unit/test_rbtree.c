/* The packed red-black tree (daemon/util/rbtree.[ch]) that holds the core's
 * mappings and the sim's areas: random operations against a plain model
 * (a bitmap of the keys present), with the tree's invariants checked as it
 * goes (order, parent links, no red node with a red child, one black height,
 * the owner bits of every node untouched); every removal shape (leaf, one
 * child, two children with the successor near and far, the root); and a
 * million entries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/tree.h>

#include <cmocka.h>

#include "util/rbtree.h"

struct node {
	DMB_RB_ENTRY(node) link;
	uint64_t key;
};

static int node_cmp(const struct node *a, const struct node *b)
{
	return a->key < b->key ? -1 : a->key > b->key;
}

RB_HEAD(ntree, node);
DMB_RB_GENERATE(ntree, node, link, node_cmp, static)

_Static_assert(sizeof(((struct node *)0)->link) == 24, "a link is three words");

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* The owner bits each node must keep: derived from its key. */
static unsigned own_of(uint64_t key)
{
	return (unsigned)((key * 0x9e3779b97f4a7c15ull) >> 62);
}

static struct node *mk(uint64_t key)
{
	struct node *n = calloc(1, sizeof(*n));
	assert_non_null(n);
	n->key = key;
	DMB_RB_SET_OWNER_BITS(n, link, own_of(key));
	return n;
}

/* Returns the black height; checks everything below n. */
static int check_sub(struct node *n, struct node *parent, const uint64_t *lo, const uint64_t *hi,
		     size_t *count)
{
	if (!n)
		return 1;
	assert_ptr_equal(DMB_RB_PARENT(n, link), parent);
	assert_int_equal(DMB_RB_OWNER_BITS(n, link), own_of(n->key));
	if (lo)
		assert_true(n->key > *lo);
	if (hi)
		assert_true(n->key < *hi);
	bool red = n->link.rbe_pc & DMB_RB_RED;
	if (red) {
		assert_false(n->link.rbe_left && (n->link.rbe_left->link.rbe_pc & DMB_RB_RED));
		assert_false(n->link.rbe_right && (n->link.rbe_right->link.rbe_pc & DMB_RB_RED));
	}
	int l = check_sub(n->link.rbe_left, n, lo, &n->key, count);
	int r = check_sub(n->link.rbe_right, n, &n->key, hi, count);
	assert_int_equal(l, r);
	(*count)++;
	return l + (red ? 0 : 1);
}

static void check_tree(struct ntree *t, size_t want)
{
	size_t count = 0;
	if (t->rbh_root)
		assert_false(t->rbh_root->link.rbe_pc & DMB_RB_RED);
	check_sub(t->rbh_root, NULL, NULL, NULL, &count);
	assert_int_equal(count, want);
}

static void free_all(struct ntree *t)
{
	struct node *n;
	while ((n = RB_MIN(ntree, t)) != NULL) {
		RB_REMOVE(ntree, t, n);
		free(n);
	}
}

/* Keys in [0, U): dense enough that inserts collide and removals hit. */
static void random_ops(unsigned universe, unsigned ops, unsigned check_every)
{
	struct ntree t = RB_INITIALIZER(&t);
	uint8_t *have = calloc(universe, 1);
	size_t n = 0;
	assert_non_null(have);
	for (unsigned i = 0; i < ops; i++) {
		uint64_t k = rnd() % universe;
		struct node key = { .key = k };
		switch (rnd() % 4) {
		case 0:
		case 1: {
			struct node *x = mk(k);
			struct node *dup = RB_INSERT(ntree, &t, x);
			if (have[k]) {
				assert_non_null(dup);
				assert_int_equal(dup->key, k);
				free(x);
			} else {
				assert_null(dup);
				have[k] = 1;
				n++;
			}
			break;
		}
		case 2: {
			struct node *x = RB_FIND(ntree, &t, &key);
			assert_int_equal(x != NULL, have[k]);
			if (x) {
				RB_REMOVE(ntree, &t, x);
				free(x);
				have[k] = 0;
				n--;
			}
			break;
		}
		default: {
			/* NFIND, NEXT and PREV against the model */
			struct node *x = RB_NFIND(ntree, &t, &key);
			uint64_t j = k;
			while (j < universe && !have[j])
				j++;
			if (j == universe) {
				assert_null(x);
				struct node *mx = RB_MAX(ntree, &t);
				if (n)
					assert_non_null(mx);
				break;
			}
			assert_non_null(x);
			assert_int_equal(x->key, j);
			struct node *nx = RB_NEXT(ntree, &t, x), *pv = RB_PREV(ntree, &t, x);
			uint64_t a = j + 1;
			while (a < universe && !have[a])
				a++;
			if (a == universe)
				assert_null(nx);
			else
				assert_int_equal(nx->key, a);
			int64_t b = (int64_t)j - 1;
			while (b >= 0 && !have[b])
				b--;
			if (b < 0)
				assert_null(pv);
			else
				assert_int_equal(pv->key, (uint64_t)b);
			break;
		}
		}
		if (i % check_every == 0)
			check_tree(&t, n);
	}
	check_tree(&t, n);
	/* in order, exactly the model's keys */
	size_t seen = 0;
	struct node *x;
	RB_FOREACH(x, ntree, &t) {
		assert_true(have[x->key]);
		seen++;
	}
	assert_int_equal(seen, n);
	free_all(&t);
	free(have);
}

static void test_random_small(void **state)
{
	(void)state;
	for (unsigned u = 1; u <= 64; u *= 2)
		random_ops(u, 20000, 1);
}

static void test_random_large(void **state)
{
	(void)state;
	random_ops(5000, 200000, 997);
}

/* Every removal shape on every position of small complete trees: remove
 * each key of 1..N from a fresh tree built in several orders. */
static void test_every_removal(void **state)
{
	(void)state;
	for (unsigned n = 1; n <= 40; n++) {
		for (unsigned order = 0; order < 3; order++) {
			for (unsigned victim = 0; victim < n; victim++) {
				struct ntree t = RB_INITIALIZER(&t);
				for (unsigned i = 0; i < n; i++) {
					unsigned k = order == 0 ? i : order == 1 ? n - 1 - i
										 : (i * 7919u) % n;
					assert_null(RB_INSERT(ntree, &t, mk(k)));
				}
				check_tree(&t, n);
				struct node key = { .key = victim };
				struct node *x = RB_FIND(ntree, &t, &key);
				assert_non_null(x);
				RB_REMOVE(ntree, &t, x);
				free(x);
				check_tree(&t, n - 1);
				assert_null(RB_FIND(ntree, &t, &key));
				free_all(&t);
			}
		}
	}
}

static void test_million(void **state)
{
	(void)state;
	enum { N = 1000000 };
	struct node *nodes = calloc(N, sizeof(*nodes));
	uint32_t *perm = malloc(N * sizeof(*perm));
	assert_non_null(nodes);
	assert_non_null(perm);
	for (uint32_t i = 0; i < N; i++)
		perm[i] = i;
	for (uint32_t i = N - 1; i > 0; i--) {
		uint32_t j = (uint32_t)(rnd() % (i + 1)), t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	struct ntree t = RB_INITIALIZER(&t);
	for (uint32_t i = 0; i < N; i++) {
		struct node *x = &nodes[perm[i]];
		x->key = (uint64_t)perm[i] * 4096;
		DMB_RB_SET_OWNER_BITS(x, link, own_of(x->key));
		assert_null(RB_INSERT(ntree, &t, x));
	}
	check_tree(&t, N);
	for (int i = 0; i < 100000; i++) {
		uint64_t q = rnd() % ((uint64_t)N * 4096);
		struct node key = { .key = q };
		struct node *x = RB_NFIND(ntree, &t, &key);
		uint64_t want = (q + 4095) / 4096 * 4096;
		if (want >= (uint64_t)N * 4096)
			assert_null(x);
		else
			assert_int_equal(x->key, want);
	}
	/* remove every other, then the rest, checking in between */
	for (uint32_t i = 0; i < N; i += 2)
		RB_REMOVE(ntree, &t, &nodes[perm[i]]);
	check_tree(&t, N / 2);
	for (uint32_t i = 1; i < N; i += 2)
		RB_REMOVE(ntree, &t, &nodes[perm[i]]);
	assert_true(RB_EMPTY(&t));
	free(perm);
	free(nodes);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_random_small),
		cmocka_unit_test(test_random_large),
		cmocka_unit_test(test_every_removal),
		cmocka_unit_test(test_million),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
