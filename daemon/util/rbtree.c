/* rbtree.c — rebalancing for rbtree.h: the red-black insert fix-up and
 * removal of OpenBSD's <sys/tree.h> (the algorithm libbsd ships), written
 * once over untyped nodes whose link sits at offset `off`, with the parent
 * pointer and the colour packed into one word. Only bit 0 (red) and the
 * pointer bits are ever written; bits 1-2 belong to the node's owner. */
#include "rbtree.h"

#include <stdbool.h>

#define LK(n) ((struct dmb_rb_link *)(void *)((char *)(n) + off))

static inline void *parent_of(void *n, size_t off)
{
	return (void *)(LK(n)->pc & DMB_RB_PTR_MASK);
}

static inline void set_parent(void *n, void *p, size_t off)
{
	LK(n)->pc = (uintptr_t)p | (LK(n)->pc & ~DMB_RB_PTR_MASK);
}

static inline bool is_red(void *n, size_t off)
{
	return n && (LK(n)->pc & DMB_RB_RED);
}

static inline void set_red(void *n, size_t off)
{
	LK(n)->pc |= DMB_RB_RED;
}

static inline void set_black(void *n, size_t off)
{
	LK(n)->pc &= ~DMB_RB_RED;
}

static inline void set_colour(void *n, bool red, size_t off)
{
	LK(n)->pc = (LK(n)->pc & ~DMB_RB_RED) | (red ? DMB_RB_RED : 0);
}

/* Puts `by` where `old` hangs from its parent (or the root). */
static inline void replace_child(void **root, void *parent, void *old, void *by, size_t off)
{
	if (!parent)
		*root = by;
	else if (LK(parent)->left == old)
		LK(parent)->left = by;
	else
		LK(parent)->right = by;
}

static void rotate_left(void **root, void *x, size_t off)
{
	void *y = LK(x)->right, *p = parent_of(x, off);
	LK(x)->right = LK(y)->left;
	if (LK(y)->left)
		set_parent(LK(y)->left, x, off);
	set_parent(y, p, off);
	replace_child(root, p, x, y, off);
	LK(y)->left = x;
	set_parent(x, y, off);
}

static void rotate_right(void **root, void *x, size_t off)
{
	void *y = LK(x)->left, *p = parent_of(x, off);
	LK(x)->left = LK(y)->right;
	if (LK(y)->right)
		set_parent(LK(y)->right, x, off);
	set_parent(y, p, off);
	replace_child(root, p, x, y, off);
	LK(y)->right = x;
	set_parent(x, y, off);
}

void dmb_rb_insert_fixup(void **root, void *z, size_t off)
{
	void *p;
	while ((p = parent_of(z, off)) && is_red(p, off)) {
		void *g = parent_of(p, off); /* p is red, so not the root */
		if (p == LK(g)->left) {
			void *u = LK(g)->right;
			if (is_red(u, off)) {
				set_black(p, off);
				set_black(u, off);
				set_red(g, off);
				z = g;
				continue;
			}
			if (z == LK(p)->right) {
				rotate_left(root, p, off);
				z = p;
				p = parent_of(z, off);
			}
			set_black(p, off);
			set_red(g, off);
			rotate_right(root, g, off);
		} else {
			void *u = LK(g)->left;
			if (is_red(u, off)) {
				set_black(p, off);
				set_black(u, off);
				set_red(g, off);
				z = g;
				continue;
			}
			if (z == LK(p)->left) {
				rotate_right(root, p, off);
				z = p;
				p = parent_of(z, off);
			}
			set_black(p, off);
			set_red(g, off);
			rotate_left(root, g, off);
		}
	}
	set_black(*root, off);
}

static void erase_fixup(void **root, void *parent, void *elm, size_t off)
{
	void *tmp;
	while (!is_red(elm, off) && elm != *root) {
		if (LK(parent)->left == elm) {
			tmp = LK(parent)->right;
			if (is_red(tmp, off)) {
				set_black(tmp, off);
				set_red(parent, off);
				rotate_left(root, parent, off);
				tmp = LK(parent)->right;
			}
			if (!is_red(LK(tmp)->left, off) && !is_red(LK(tmp)->right, off)) {
				set_red(tmp, off);
				elm = parent;
				parent = parent_of(elm, off);
			} else {
				if (!is_red(LK(tmp)->right, off)) {
					set_black(LK(tmp)->left, off); /* red, so present */
					set_red(tmp, off);
					rotate_right(root, tmp, off);
					tmp = LK(parent)->right;
				}
				set_colour(tmp, is_red(parent, off), off);
				set_black(parent, off);
				if (LK(tmp)->right)
					set_black(LK(tmp)->right, off);
				rotate_left(root, parent, off);
				elm = *root;
				break;
			}
		} else {
			tmp = LK(parent)->left;
			if (is_red(tmp, off)) {
				set_black(tmp, off);
				set_red(parent, off);
				rotate_right(root, parent, off);
				tmp = LK(parent)->left;
			}
			if (!is_red(LK(tmp)->left, off) && !is_red(LK(tmp)->right, off)) {
				set_red(tmp, off);
				elm = parent;
				parent = parent_of(elm, off);
			} else {
				if (!is_red(LK(tmp)->left, off)) {
					set_black(LK(tmp)->right, off);
					set_red(tmp, off);
					rotate_left(root, tmp, off);
					tmp = LK(parent)->left;
				}
				set_colour(tmp, is_red(parent, off), off);
				set_black(parent, off);
				if (LK(tmp)->left)
					set_black(LK(tmp)->left, off);
				rotate_right(root, parent, off);
				elm = *root;
				break;
			}
		}
	}
	if (elm)
		set_black(elm, off);
}

void dmb_rb_erase(void **root, void *elm, size_t off)
{
	void *child, *parent, *old = elm;
	bool red;

	if (!LK(elm)->left) {
		child = LK(elm)->right;
	} else if (!LK(elm)->right) {
		child = LK(elm)->left;
	} else {
		/* Two children: the successor takes elm's place in the tree
		 * (its link, colour included; its own owner bits stay). */
		void *left;
		elm = LK(elm)->right;
		while ((left = LK(elm)->left))
			elm = left;
		child = LK(elm)->right;
		parent = parent_of(elm, off);
		red = is_red(elm, off);
		if (child)
			set_parent(child, parent, off);
		replace_child(root, parent, elm, child, off);
		if (parent == old)
			parent = elm;
		uintptr_t own = LK(elm)->pc & DMB_RB_OWNER_MASK;
		LK(elm)->left = LK(old)->left;
		LK(elm)->right = LK(old)->right;
		LK(elm)->pc = (LK(old)->pc & ~DMB_RB_OWNER_MASK) | own;
		replace_child(root, parent_of(old, off), old, elm, off);
		set_parent(LK(old)->left, elm, off);
		if (LK(old)->right)
			set_parent(LK(old)->right, elm, off);
		goto colour;
	}
	parent = parent_of(elm, off);
	red = is_red(elm, off);
	if (child)
		set_parent(child, parent, off);
	replace_child(root, parent, elm, child, off);
colour:
	if (!red)
		erase_fixup(root, parent, child, off);
}

void *dmb_rb_next(void *elm, size_t off)
{
	if (LK(elm)->right) {
		elm = LK(elm)->right;
		while (LK(elm)->left)
			elm = LK(elm)->left;
		return elm;
	}
	void *p;
	while ((p = parent_of(elm, off)) && LK(p)->right == elm)
		elm = p;
	return p;
}

void *dmb_rb_prev(void *elm, size_t off)
{
	if (LK(elm)->left) {
		elm = LK(elm)->left;
		while (LK(elm)->right)
			elm = LK(elm)->right;
		return elm;
	}
	void *p;
	while ((p = parent_of(elm, off)) && LK(p)->left == elm)
		elm = p;
	return p;
}

void *dmb_rb_minmax(void *root, size_t off, int max)
{
	void *n = root, *res = NULL;
	while (n) {
		res = n;
		n = max ? LK(n)->right : LK(n)->left;
	}
	return res;
}
