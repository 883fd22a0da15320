/*
 * list: an intrusive circular doubly linked list (as in the Linux kernel).
 *
 * A node lives inside the object it links; insert and remove are O(1) and
 * never allocate. An unlinked node points at itself, so list_linked()
 * tells whether an object is on a list. Header-only.
 */
#ifndef PAYGATE_LIST_H
#define PAYGATE_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct list_node {
    struct list_node *prev;
    struct list_node *next;
} list_node_t;

/* The object of type 'type' that holds 'node' in its member 'member'. */
#define list_entry(node, type, member) ((type *)((char *)(node)-offsetof(type, member)))

static inline void list_init(list_node_t *node)
{
    node->prev = node;
    node->next = node;
}

static inline bool list_empty(const list_node_t *head)
{
    return head->next == head;
}

/* True when 'node' is on some list. */
static inline bool list_linked(const list_node_t *node)
{
    return node->next != node;
}

static inline void list_insert_between(list_node_t *node, list_node_t *prev, list_node_t *next)
{
    node->prev = prev;
    node->next = next;
    prev->next = node;
    next->prev = node;
}

/* Appends 'node' at the tail of 'head'. */
static inline void list_push_back(list_node_t *head, list_node_t *node)
{
    list_insert_between(node, head->prev, head);
}

/* Inserts 'node' at the front of 'head'. */
static inline void list_push_front(list_node_t *head, list_node_t *node)
{
    list_insert_between(node, head, head->next);
}

/* Unlinks 'node' and makes it point at itself; safe on an unlinked node. */
static inline void list_remove(list_node_t *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    list_init(node);
}

/* The first node of 'head', or NULL when empty. */
static inline list_node_t *list_front(const list_node_t *head)
{
    return list_empty(head) ? NULL : head->next;
}

#endif
