/*
 * arena: bump allocation over a chain of malloc'd blocks. See arena.h.
 */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct arena_block {
    struct arena_block *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    _Alignas(16) unsigned char data[];
} arena_block_t;

struct arena {
    arena_block_t *head; /* current block; older ones follow */
    size_t block_bytes;
    size_t total_bytes;
};

arena_t *arena_new(size_t block_bytes)
{
    arena_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->block_bytes = block_bytes < 1024 ? 1024 : block_bytes;
    return self;
}

/* Frees every block after 'keep' (all blocks when 'keep' is NULL). */
static void arena_free_blocks(arena_block_t *block)
{
    while (block != NULL) {
        arena_block_t *next = block->next;
        free(block);
        block = next;
    }
}

void arena_destroy(arena_t **self)
{
    if (*self == NULL)
        return;
    arena_free_blocks((*self)->head);
    free(*self);
    *self = NULL;
}

void *arena_alloc(arena_t *self, size_t bytes)
{
    size_t need = (bytes + 15) & ~(size_t)15;
    if (need < bytes)
        return NULL; /* overflow */
    arena_block_t *block = self->head;
    if (block == NULL || block->size - block->used < need) {
        size_t size = need > self->block_bytes ? need : self->block_bytes;
        if (size > arena_bytes_max - self->total_bytes) /* no wrap: total <= max */
            return NULL;
        block = malloc(sizeof *block + size);
        if (block == NULL)
            return NULL;
        block->size = size;
        block->used = 0;
        block->next = self->head;
        self->head = block;
        self->total_bytes += size;
    }
    void *result = block->data + block->used;
    block->used += need;
    memset(result, 0, need);
    return result;
}

char *arena_strdup(arena_t *self, const char *text)
{
    size_t n = strlen(text) + 1;
    char *copy = arena_alloc(self, n);
    if (copy != NULL)
        memcpy(copy, text, n);
    return copy;
}

void arena_reset(arena_t *self)
{
    if (self->head == NULL)
        return;
    /* Keep only the oldest block (the last in the chain): the steady state
     * of a worker is one block. */
    arena_block_t *block = self->head;
    arena_block_t *oldest = block;
    while (oldest->next != NULL)
        oldest = oldest->next;
    while (block != oldest) {
        arena_block_t *next = block->next;
        free(block);
        block = next;
    }
    oldest->used = 0;
    self->head = oldest;
    self->total_bytes = oldest->size;
}

static void *arena_pb_alloc(void *data, size_t size)
{
    return arena_alloc(data, size);
}

static void arena_pb_free(void *data, void *pointer)
{
    (void)data;
    (void)pointer;
}

ProtobufCAllocator arena_protobuf_allocator(arena_t *self)
{
    ProtobufCAllocator allocator = {
        .alloc = arena_pb_alloc, .free = arena_pb_free, .allocator_data = self};
    return allocator;
}
