/* rbtree.h — an intrusive red-black tree with a packed link: 24 bytes per
 * node instead of libbsd's 32 (left, right, and the parent pointer with the
 * colour in bit 0; bits 1-2 are the node owner's, kept by every tree
 * operation). The per-mapping nodes of the core and of the sim backend use
 * it: at a million mappings those 8 bytes, and the 2 bits that hold a
 * mapping's prot, are what decides the bytes per mapping.
 *
 * The interface is libbsd's <sys/tree.h>: DMB_RB_GENERATE(name, ...) makes
 * name##_RB_INSERT, _REMOVE, _FIND, _NFIND, _NEXT, _PREV and _MINMAX, so
 * RB_INSERT(name, head, elm), RB_NFIND, RB_MIN, RB_NEXT, RB_FOREACH,
 * RB_LEFT, RB_RIGHT, RB_ROOT, RB_INIT and RB_EMPTY work unchanged on these
 * trees; RB_PARENT and RB_COLOR do not (use DMB_RB_PARENT). The descent
 * (with the comparison inlined) is generated per tree; rebalancing is
 * shared code in rbtree.c.
 *
 * Nodes must be 8-byte aligned (checked when the tree is generated). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define DMB_RB_ENTRY(type)                                                          \
	struct {                                                                    \
		struct type *rbe_left;                                              \
		struct type *rbe_right;                                             \
		uintptr_t rbe_pc; /* parent | owner bits 1-2 | red (bit 0) */       \
	}

/* What rbtree.c sees of an entry: the same layout, untyped. left, right and
 * the parent point at the containing objects; off is the entry's offset in
 * them. */
struct dmb_rb_link {
	void *left;
	void *right;
	uintptr_t pc;
};

#define DMB_RB_RED ((uintptr_t)1)
#define DMB_RB_OWNER_MASK ((uintptr_t)6)
#define DMB_RB_PTR_MASK (~(uintptr_t)7)

#define DMB_RB_PARENT(elm, field) ((__typeof__(elm))((elm)->field.rbe_pc & DMB_RB_PTR_MASK))
/* The owner's two bits (0..3). */
#define DMB_RB_OWNER_BITS(elm, field) ((unsigned)(((elm)->field.rbe_pc >> 1) & 3u))
#define DMB_RB_SET_OWNER_BITS(elm, field, v)                                        \
	((elm)->field.rbe_pc = ((elm)->field.rbe_pc & ~DMB_RB_OWNER_MASK) |         \
			       (((uintptr_t)(v) & 3u) << 1))

/* rbtree.c: root is the head's rbh_root. */
void dmb_rb_insert_fixup(void **root, void *elm, size_t off);
void dmb_rb_erase(void **root, void *elm, size_t off);
void *dmb_rb_next(void *elm, size_t off);
void *dmb_rb_prev(void *elm, size_t off);
void *dmb_rb_minmax(void *root, size_t off, int max);

#define DMB_RB_PROTOTYPE(name, type, field, cmp, attr)                              \
	attr struct type *name##_RB_INSERT(struct name *, struct type *);           \
	attr struct type *name##_RB_REMOVE(struct name *, struct type *);           \
	attr struct type *name##_RB_FIND(struct name *, struct type *);             \
	attr struct type *name##_RB_NFIND(struct name *, struct type *);            \
	attr struct type *name##_RB_NEXT(struct type *);                            \
	attr struct type *name##_RB_PREV(struct type *);                            \
	attr struct type *name##_RB_MINMAX(struct name *, int);

#define DMB_RB_GENERATE(name, type, field, cmp, attr)                               \
	_Static_assert(_Alignof(struct type) >= 8,                                  \
		       "rbtree nodes need 3 free low bits in their address");      \
	attr struct type *name##_RB_INSERT(struct name *head, struct type *elm)     \
	{                                                                           \
		struct type *parent = NULL, *tmp = head->rbh_root;                  \
		int c = 0;                                                          \
		while (tmp) {                                                       \
			parent = tmp;                                               \
			c = (cmp)(elm, parent);                                     \
			if (c < 0)                                                  \
				tmp = tmp->field.rbe_left;                          \
			else if (c > 0)                                             \
				tmp = tmp->field.rbe_right;                         \
			else                                                        \
				return tmp;                                         \
		}                                                                   \
		elm->field.rbe_left = elm->field.rbe_right = NULL;                  \
		elm->field.rbe_pc = (uintptr_t)parent |                             \
				    (elm->field.rbe_pc & DMB_RB_OWNER_MASK) | DMB_RB_RED; \
		if (!parent)                                                        \
			head->rbh_root = elm;                                       \
		else if (c < 0)                                                     \
			parent->field.rbe_left = elm;                               \
		else                                                                \
			parent->field.rbe_right = elm;                              \
		dmb_rb_insert_fixup((void **)&head->rbh_root, elm,                  \
				    offsetof(struct type, field));                  \
		return NULL;                                                        \
	}                                                                           \
	attr struct type *name##_RB_REMOVE(struct name *head, struct type *elm)     \
	{                                                                           \
		dmb_rb_erase((void **)&head->rbh_root, elm, offsetof(struct type, field)); \
		return elm;                                                         \
	}                                                                           \
	attr struct type *name##_RB_FIND(struct name *head, struct type *elm)       \
	{                                                                           \
		struct type *tmp = head->rbh_root;                                  \
		while (tmp) {                                                       \
			int c = (cmp)(elm, tmp);                                    \
			if (c < 0)                                                  \
				tmp = tmp->field.rbe_left;                          \
			else if (c > 0)                                             \
				tmp = tmp->field.rbe_right;                         \
			else                                                        \
				return tmp;                                         \
		}                                                                   \
		return NULL;                                                        \
	}                                                                           \
	attr struct type *name##_RB_NFIND(struct name *head, struct type *elm)      \
	{                                                                           \
		struct type *tmp = head->rbh_root, *res = NULL;                     \
		while (tmp) {                                                       \
			int c = (cmp)(elm, tmp);                                    \
			if (c < 0) {                                                \
				res = tmp;                                          \
				tmp = tmp->field.rbe_left;                          \
			} else if (c > 0) {                                         \
				tmp = tmp->field.rbe_right;                         \
			} else {                                                    \
				return tmp;                                         \
			}                                                           \
		}                                                                   \
		return res;                                                         \
	}                                                                           \
	attr struct type *name##_RB_NEXT(struct type *elm)                          \
	{                                                                           \
		return dmb_rb_next(elm, offsetof(struct type, field));              \
	}                                                                           \
	attr struct type *name##_RB_PREV(struct type *elm)                          \
	{                                                                           \
		return dmb_rb_prev(elm, offsetof(struct type, field));              \
	}                                                                           \
	attr struct type *name##_RB_MINMAX(struct name *head, int val)              \
	{                                                                           \
		return dmb_rb_minmax(head->rbh_root, offsetof(struct type, field),  \
				     val > 0);                                      \
	}
