/*
 * arena: a bump allocator for everything one RPC call allocates.
 *
 * The RPC worker decodes a request, runs the handler and encodes the reply
 * with one arena, then resets it: no per-field free, no leak on an error
 * path. Blocks are kept across resets, so a warm worker does not call
 * malloc. Never use memory from an arena after arena_reset().
 */
#ifndef PAYGATE_ARENA_H
#define PAYGATE_ARENA_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

typedef struct arena arena_t;

/* A new arena whose blocks are at least 'block_bytes' long. NULL on OOM. */
arena_t *arena_new(size_t block_bytes);

/* Frees the arena and all its memory, and sets '*self' to NULL. */
void arena_destroy(arena_t **self);

/* 'bytes' of 16-byte aligned, zeroed memory, or NULL when the arena would
 * grow over its limit (arena_bytes_max) or malloc fails. */
void *arena_alloc(arena_t *self, size_t bytes);

/* A copy of 'text' in the arena, or NULL. */
char *arena_strdup(arena_t *self, const char *text);

/* Forgets every allocation; keeps the first block for reuse. */
void arena_reset(arena_t *self);

/* A protobuf-c allocator backed by 'self' (free is a no-op). */
ProtobufCAllocator arena_protobuf_allocator(arena_t *self);

enum { arena_bytes_max = 64 * 1024 * 1024 };

#endif
