/*
 * deflate.h — the engine's block codec: raw deflate streams (RFC 1951), written by deflate.c, read by inflate.c.
 *
 * Table data blocks are stored as raw deflate streams (docs/format.md, "Compression"). The format is the one zlib
 * writes and reads with window bits -15, and zlib reads what this codec writes and the other way round (the unit
 * tests check both directions); the engine has its own codec because zlib spent most of the engine's CPU time:
 * a 4 KiB block took zlib 40 µs to compress and 17-20 µs to inflate on the benchmark machine (docs/benchmarks.md).
 *
 * Invariants
 *  - deflate_decompress never reads outside [in, in + n) or writes outside [out, out + outlen), whatever the input:
 *    a malformed, truncated or over-long stream is an error, never a crash and never a partial success. A stream
 *    is accepted only if it ends with a final block, produces exactly outlen bytes, and uses every byte of the input
 *    (only the padding bits of its last byte may be left).
 *  - deflate_compress writes at most cap bytes; when the stream would not fit it returns 0 and the caller stores the
 *    data raw. It is deterministic: the same input gives the same stream.
 */
#ifndef KV_DEFLATE_H
#define KV_DEFLATE_H

#include <stddef.h>
#include <stdint.h>

/* Compression state reused across calls (a hash table of recent positions and a symbol buffer). One per thread or
 * per table builder; not thread-safe. */
typedef struct deflate_encoder deflate_encoder;

deflate_encoder *deflate_encoder_new(void); /* NULL when out of memory */
void deflate_encoder_free(deflate_encoder *e);

/* Compress in[0..n) into one raw deflate stream at out[0..cap). Returns the stream's length, or 0 when it would
 * not fit in cap bytes or memory ran out (the caller then keeps the data uncompressed). */
size_t deflate_compress(deflate_encoder *e, const uint8_t *in, size_t n, uint8_t *out, size_t cap);

/* Decompress the raw deflate stream in[0..n) into exactly outlen bytes at out. 0 on success, -1 when the stream is
 * malformed, truncated, followed by other bytes, or does not produce exactly outlen bytes. Thread-safe. */
int deflate_decompress(const uint8_t *in, size_t n, uint8_t *out, size_t outlen);

/* The format's constants (RFC 1951 section 3.2.5), shared by both sides; defined in inflate.c. Length symbol
 * 257 + i stands for length_base[i] plus length_extra[i] extra bits, distance symbol i for dist_base[i] plus
 * dist_extra[i]; a dynamic block sends the code-length code's lengths in precode_order. */
extern const uint16_t deflate_length_base[29], deflate_dist_base[30];
extern const uint8_t deflate_length_extra[29], deflate_dist_extra[30], deflate_precode_order[19];

#endif /* KV_DEFLATE_H */
